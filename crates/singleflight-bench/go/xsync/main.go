// Go's golang.org/x/sync/singleflight in the scenarios of the Rust runner
// (crates/singleflight-bench/src/bin/compare.rs), so both are measured the
// same way in one run. The runner calls this program once per repetition and
// reads one line: the samples in nanoseconds, separated by spaces.
//
//	xsync key <n>                 cost of making the fresh key alone, ns per key
//	xsync distinct <threads> <n>  fresh key per call, ns per call per goroutine
//	xsync hot <threads> <n>       one key, work returns at once, wall ns per call
//	xsync herd <threads> <ms> <rounds>
//	                              goroutines released together on one key whose
//	                              work sleeps <ms>; ns per round (release to last return)
//
// Build in GOPATH mode from Debian's golang-golang-x-sync-dev, no download:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o xsync .
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// The key for call i: "key-" and i in decimal, built into one fresh heap
// string, as the Rust side does with format!.
func key(buf []byte, i int) string {
	buf = append(buf[:0], "key-"...)
	buf = strconv.AppendInt(buf, int64(i), 10)
	return string(buf)
}

var sink atomic.Int64

func keyOnly(n int) float64 {
	var buf [32]byte
	start := time.Now()
	total := 0
	for i := 0; i < n; i++ {
		total += len(key(buf[:], i))
	}
	elapsed := time.Since(start)
	sink.Add(int64(total))
	return float64(elapsed.Nanoseconds()) / float64(n)
}

func distinct(threads, n int) float64 {
	var g singleflight.Group
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(threads)
	done.Add(threads)
	for t := 0; t < threads; t++ {
		go func(t int) {
			var buf [32]byte
			ready.Done()
			<-start
			for i := t * n; i < (t+1)*n; i++ {
				v, _, _ := g.Do(key(buf[:], i), func() (interface{}, error) { return 42, nil })
				if v.(int) != 42 {
					panic("wrong value")
				}
			}
			done.Done()
		}(t)
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	// Per call as seen by each goroutine: wall time over the calls of one.
	return float64(time.Since(t0).Nanoseconds()) / float64(n)
}

func hot(threads, n int) float64 {
	var g singleflight.Group
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(threads)
	done.Add(threads)
	for t := 0; t < threads; t++ {
		go func() {
			ready.Done()
			<-start
			for i := 0; i < n; i++ {
				v, _, _ := g.Do("hot", func() (interface{}, error) { return 42, nil })
				if v.(int) != 42 {
					panic("wrong value")
				}
			}
			done.Done()
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	return float64(time.Since(t0).Nanoseconds()) / float64(threads*n)
}

func herd(threads int, work time.Duration, rounds int) []float64 {
	var g singleflight.Group
	var out []float64
	var executions atomic.Int64
	for r := 0; r < rounds; r++ {
		var ready, done sync.WaitGroup
		start := make(chan struct{})
		var t0 time.Time
		var last atomic.Int64 // latest return, ns after t0
		ready.Add(threads)
		done.Add(threads)
		for t := 0; t < threads; t++ {
			go func() {
				ready.Done()
				<-start
				v, _, _ := g.Do("herd", func() (interface{}, error) {
					executions.Add(1)
					time.Sleep(work)
					return 42, nil
				})
				if v.(int) != 42 {
					panic("wrong value")
				}
				end := time.Since(t0).Nanoseconds()
				for {
					cur := last.Load()
					if end <= cur || last.CompareAndSwap(cur, end) {
						break
					}
				}
				done.Done()
			}()
		}
		ready.Wait()
		t0 = time.Now()
		close(start)
		done.Wait()
		out = append(out, float64(last.Load()))
	}
	fmt.Fprintf(os.Stderr, "go herd: %d executions in %d rounds\n", executions.Load(), rounds)
	return out
}

func arg(i int) int {
	v, err := strconv.Atoi(os.Args[i])
	if err != nil {
		fmt.Fprintf(os.Stderr, "argument %d: %v\n", i, err)
		os.Exit(2)
	}
	return v
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: xsync key|distinct|hot|herd ARGS (see the top of main.go)")
		os.Exit(2)
	}
	var samples []float64
	switch os.Args[1] {
	case "key":
		samples = []float64{keyOnly(arg(2))}
	case "distinct":
		samples = []float64{distinct(arg(2), arg(3))}
	case "hot":
		samples = []float64{hot(arg(2), arg(3))}
	case "herd":
		samples = herd(arg(2), time.Duration(arg(3))*time.Millisecond, arg(4))
	default:
		fmt.Fprintf(os.Stderr, "unknown scenario %q\n", os.Args[1])
		os.Exit(2)
	}
	for i, s := range samples {
		if i > 0 {
			fmt.Print(" ")
		}
		fmt.Printf("%.1f", s)
	}
	fmt.Println()
}
