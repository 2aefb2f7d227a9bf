// The burst pattern of the policies bench with Go's golang.org/x/sync/singleflight, for
// crates/singleflight-bench/benches/policies.rs: <callers> goroutines arrive
// evenly over <spread_ms> on one key whose work sleeps <work_ms>. Go's group
// has no memo, so every flight that ends lets the next caller start another.
// Prints one line: the executions, then the callers' wait at p50 and max in
// microseconds.
//
//	burst <callers> <spread_ms> <work_ms>
//
// Build in GOPATH mode from Debian's golang-golang-x-sync-dev, no download:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o burst .
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

func arg(i int) int {
	v, err := strconv.Atoi(os.Args[i])
	if err != nil {
		fmt.Fprintf(os.Stderr, "usage: burst <callers> <spread_ms> <work_ms>: %v\n", err)
		os.Exit(2)
	}
	return v
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: burst <callers> <spread_ms> <work_ms>")
		os.Exit(2)
	}
	callers, spread, work := arg(1), arg(2), arg(3)
	var group singleflight.Group
	var executions atomic.Int64
	waits := make([]time.Duration, callers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			at := start.Add(time.Duration(spread) * time.Millisecond * time.Duration(i) / time.Duration(callers))
			time.Sleep(time.Until(at))
			began := time.Now()
			group.Do("key", func() (interface{}, error) {
				executions.Add(1)
				time.Sleep(time.Duration(work) * time.Millisecond)
				return 42, nil
			})
			waits[i] = time.Since(began)
		}(i)
	}
	wg.Wait()
	sort.Slice(waits, func(a, b int) bool { return waits[a] < waits[b] })
	fmt.Printf("%d %d %d\n", executions.Load(), waits[len(waits)/2].Microseconds(), waits[len(waits)-1].Microseconds())
}
