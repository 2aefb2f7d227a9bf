// Command server is the Go reference for `singleflight serve`: the Go demo
// server, net/http plus golang.org/x/sync/singleflight, in front of the same
// upstream. GET /normal calls the upstream on every request; GET /singleflight
// wraps the same call in group.Do("status", ...). Each request logs its
// processing time, the status and (for /singleflight) the shared flag.
//
// Build without downloading modules, from Debian's packages
// (golang-go, golang-golang-x-sync-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/sf-go-server .
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"golang.org/x/sync/singleflight"
)

var (
	listen   = flag.String("listen", "127.0.0.1:8090", "address to listen on")
	upstream = flag.String("upstream", "http://127.0.0.1:8081/status", "the upstream URL to call")
	quiet    = flag.Bool("quiet", false, "do not log a line per request")
	group    singleflight.Group
	client   = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 1024},
	}
)

// getStatus calls the upstream and returns its status code.
func getStatus() (int, error) {
	resp, err := client.Get(*upstream)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	// Drain so the connection is reused, as the Rust server does.
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func normal(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	status, err := getStatus()
	if err != nil {
		http.Error(w, "upstream unreachable: "+err.Error(), http.StatusBadGateway)
		return
	}
	if !*quiet {
		log.Printf("/normal processing time: %v | status: %d", time.Since(start), status)
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "Status: %d\n", status)
}

func coalesced(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	v, err, shared := group.Do("status", func() (interface{}, error) {
		return getStatus()
	})
	if err != nil {
		http.Error(w, "upstream unreachable: "+err.Error(), http.StatusBadGateway)
		return
	}
	status := v.(int)
	if !*quiet {
		log.Printf("/singleflight processing time: %v | status: %d | shared: %v", time.Since(start), status, shared)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("X-Singleflight-Shared", fmt.Sprint(shared))
	fmt.Fprintf(w, "Status: %d\n", status)
}

func main() {
	flag.Parse()
	http.HandleFunc("/normal", normal)
	http.HandleFunc("/singleflight", coalesced)
	log.Printf("go reference server listening on %s, upstream %s", *listen, *upstream)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
