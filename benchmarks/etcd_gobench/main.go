// Command etcd_gobench drives an etcd cluster through etcd's own Go gRPC client (clientv3)
// and prints one JSON object with the throughput and exact latency percentiles.
//
// N client goroutines each keep one request in flight; they share M gRPC connections
// (clientv3 clients) round-robin, and connection i is pinned to endpoint i mod len(endpoints)
// (or to the leader with -target-leader). Keys are bench/<n>, n uniform in [0, key-space).
//
// Build (GOPATH layout, Debian's golang-etcd-server-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o etcd_gobench main.go
//
// Usage:
//
//	etcd_gobench -endpoints 127.0.0.1:2379 -op put -clients 64 -duration 10s
//	etcd_gobench -endpoints 127.0.0.1:2379 -op get -clients 64 -total 100000 -preload
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

const exitUsage = 2

type options struct {
	endpoints    []string
	op           string
	serializable bool
	clients      int
	conns        int
	duration     time.Duration
	total        int64
	valueSize    int
	keySpace     int
	preload      bool
	timeout      time.Duration
	dialTimeout  time.Duration
	targetLeader bool
	seed         int64
}

// latencyMs holds the latency summary of the successful requests, in milliseconds.
type latencyMs struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type result struct {
	Op             string         `json:"op"`
	Serializable   bool           `json:"serializable"`
	Clients        int            `json:"clients"`
	Conns          int            `json:"conns"`
	Endpoints      []string       `json:"endpoints"`
	TargetLeader   bool           `json:"target_leader"`
	ValueSize      int            `json:"value_size"`
	KeySpace       int            `json:"key_space"`
	Ops            int64          `json:"ops"`
	Errors         map[string]int `json:"errors"`
	ErrorCount     int            `json:"error_count"`
	ElapsedS       float64        `json:"elapsed_s"`
	ThroughputOpsS float64        `json:"throughput_ops_s"`
	LatencyMs      latencyMs      `json:"latency_ms"`
	// The generator's own CPU time during the run, and that divided by elapsed_s.
	GeneratorCPUS  float64 `json:"generator_cpu_s"`
	GeneratorCores float64 `json:"generator_cores"`
}

// worker is the private state of one client goroutine: nothing here is shared.
type worker struct {
	samples []time.Duration
	errors  map[string]int
	rng     *rand.Rand
}

func fail(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcd_gobench: "+format+"\n", args...)
	os.Exit(code)
}

func parseFlags(args []string) options {
	var o options
	var endpoints string
	fs := flag.NewFlagSet("etcd_gobench", flag.ContinueOnError)
	fs.StringVar(&endpoints, "endpoints", "127.0.0.1:2379", "gRPC client endpoints, host:port,... (an http:// prefix is accepted)")
	fs.StringVar(&o.op, "op", "put", "put, or get (a range of one key)")
	fs.BoolVar(&o.serializable, "serializable", false, "get: serializable (possibly stale) reads instead of linearizable ones")
	fs.IntVar(&o.clients, "clients", 1, "concurrent client goroutines, each with one request in flight")
	fs.IntVar(&o.conns, "conns", 0, "gRPC connections shared round-robin by the clients (default: 1 per 100 clients, at least 1)")
	fs.DurationVar(&o.duration, "duration", 0, "how long to run (default 10s unless -total is given)")
	fs.Int64Var(&o.total, "total", 0, "how many requests to send in all (instead of -duration)")
	fs.IntVar(&o.valueSize, "value-size", 256, "bytes per value")
	fs.IntVar(&o.keySpace, "key-space", 1000, "number of distinct keys bench/<n>, picked uniformly at random")
	fs.BoolVar(&o.preload, "preload", false, "write every key once before the run (for get runs)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of each request")
	fs.DurationVar(&o.dialTimeout, "dial-timeout", 5*time.Second, "timeout for connecting to each endpoint")
	fs.BoolVar(&o.targetLeader, "target-leader", false, "send every request to the current leader")
	fs.Int64Var(&o.seed, "seed", 0, "random seed for the key choice (default: from the clock)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(exitUsage)
	}
	if fs.NArg() > 0 {
		fail(exitUsage, "unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	for _, e := range strings.Split(endpoints, ",") {
		e = strings.TrimSpace(e)
		e = strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://")
		e = strings.TrimSuffix(e, "/")
		if e == "" {
			continue
		}
		if !strings.Contains(e, ":") {
			fail(exitUsage, "-endpoints: %q is not host:port", e)
		}
		o.endpoints = append(o.endpoints, e)
	}
	switch {
	case len(o.endpoints) == 0:
		fail(exitUsage, "-endpoints: no endpoint given")
	case o.op != "put" && o.op != "get":
		fail(exitUsage, "-op: %q is neither put nor get", o.op)
	case o.serializable && o.op != "get":
		fail(exitUsage, "-serializable applies to -op get only")
	case o.clients < 1:
		fail(exitUsage, "-clients must be at least 1")
	case o.conns < 0:
		fail(exitUsage, "-conns must be at least 1")
	case o.duration < 0 || o.total < 0:
		fail(exitUsage, "-duration and -total must not be negative")
	case o.duration > 0 && o.total > 0:
		fail(exitUsage, "give -duration or -total, not both")
	case o.valueSize < 0:
		fail(exitUsage, "-value-size must not be negative")
	case o.keySpace < 1:
		fail(exitUsage, "-key-space must be at least 1")
	case o.timeout <= 0 || o.dialTimeout <= 0:
		fail(exitUsage, "-timeout and -dial-timeout must be positive")
	}
	if o.duration == 0 && o.total == 0 {
		o.duration = 10 * time.Second
	}
	if o.conns == 0 {
		o.conns = (o.clients + 99) / 100
	}
	if o.conns > o.clients {
		o.conns = o.clients
	}
	if o.seed == 0 {
		o.seed = time.Now().UnixNano()
	}
	return o
}

func connect(endpoint string, dialTimeout time.Duration) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: dialTimeout,
		// Block until the connection is up, so that a dead endpoint fails here and not as a
		// stream of request errors.
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
	})
}

// findLeader asks each endpoint for its status and returns the leader's endpoint.
func findLeader(endpoints []string, dialTimeout time.Duration) (string, error) {
	var problems []string
	for _, e := range endpoints {
		c, err := connect(e, dialTimeout)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", e, err))
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		st, err := c.Status(ctx, e)
		cancel()
		c.Close()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", e, err))
			continue
		}
		if st.Leader != 0 && st.Leader == st.Header.MemberId {
			return e, nil
		}
	}
	if len(problems) == 0 {
		return "", errors.New("no endpoint is the leader (is the leader among -endpoints?)")
	}
	return "", errors.New(strings.Join(problems, "; "))
}

// connectAll opens the connections and checks that each endpoint answers a status request.
// With -target-leader, o.endpoints becomes the leader's endpoint alone.
func connectAll(o *options) ([]*clientv3.Client, error) {
	if o.targetLeader {
		leader, err := findLeader(o.endpoints, o.dialTimeout)
		if err != nil {
			return nil, fmt.Errorf("cannot find the leader: %v", err)
		}
		o.endpoints = []string{leader}
	}
	endpoints := o.endpoints
	conns := make([]*clientv3.Client, 0, o.conns)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for i := 0; i < o.conns; i++ {
		endpoint := endpoints[i%len(endpoints)]
		c, err := connect(endpoint, o.dialTimeout)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("cannot connect to etcd at %s within %v: %v "+
				"(is etcd running, and is this its client URL?)", endpoint, o.dialTimeout, err)
		}
		conns = append(conns, c)
		if i < len(endpoints) {
			ctx, cancel := context.WithTimeout(context.Background(), o.dialTimeout)
			_, err = c.Status(ctx, endpoint)
			cancel()
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("etcd at %s does not answer a status request: %v", endpoint, err)
			}
		}
	}
	return conns, nil
}

// errorKind names an error briefly: the etcd server's own reason when there is one
// ("request_timed_out", "no_leader"), otherwise the gRPC code or "timeout".
func errorKind(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	if ee, ok := rpctypes.Error(err).(rpctypes.EtcdError); ok {
		desc := strings.TrimPrefix(ee.Error(), "etcdserver: ")
		if i := strings.Index(desc, ","); i >= 0 {
			desc = desc[:i]
		}
		return strings.ReplaceAll(strings.TrimSpace(desc), " ", "_")
	}
	if st, ok := status.FromError(err); ok {
		return snake(st.Code().String())
	}
	return "other"
}

// snake turns "DeadlineExceeded" into "deadline_exceeded".
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func key(n int) string {
	return fmt.Sprintf("bench/%d", n)
}

func makeValue(size int, seed int64) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	rng := rand.New(rand.NewSource(seed))
	b := make([]byte, size)
	for i := range b {
		b[i] = letters[rng.Intn(len(letters))]
	}
	return string(b)
}

// preload writes every key once, using all the clients, before anything is measured.
func preload(o options, conns []*clientv3.Client, value string) error {
	var next int64 = -1
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for i := 0; i < o.clients; i++ {
		wg.Add(1)
		go func(c *clientv3.Client) {
			defer wg.Done()
			for {
				n := atomic.AddInt64(&next, 1)
				if n >= int64(o.keySpace) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
				_, err := c.Put(ctx, key(int(n)), value)
				cancel()
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("preload of %s failed: %v", key(int(n)), err) })
					return
				}
			}
		}(conns[i%len(conns)])
	}
	wg.Wait()
	return firstErr
}

// run drives the load and returns the per-client state and the elapsed time.
func run(o options, conns []*clientv3.Client, value string) ([]*worker, time.Duration) {
	workers := make([]*worker, o.clients)
	var getOpts []clientv3.OpOption
	if o.serializable {
		getOpts = append(getOpts, clientv3.WithSerializable())
	}
	var issued int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(o.duration)
	for i := range workers {
		w := &worker{
			errors: map[string]int{},
			rng:    rand.New(rand.NewSource(o.seed + int64(i))),
		}
		if o.duration > 0 {
			w.samples = make([]time.Duration, 0, 1024)
		}
		workers[i] = w
		wg.Add(1)
		go func(w *worker, c *clientv3.Client) {
			defer wg.Done()
			for {
				if o.total > 0 {
					if atomic.AddInt64(&issued, 1) > o.total {
						return
					}
				} else if !time.Now().Before(deadline) {
					return
				}
				k := key(w.rng.Intn(o.keySpace))
				ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
				began := time.Now()
				var err error
				if o.op == "put" {
					_, err = c.Put(ctx, k, value)
				} else {
					_, err = c.Get(ctx, k, getOpts...)
				}
				took := time.Since(began)
				cancel()
				if err != nil {
					w.errors[errorKind(err)]++
				} else {
					w.samples = append(w.samples, took)
				}
			}
		}(w, conns[i%len(conns)])
	}
	wg.Wait()
	return workers, time.Since(start)
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func summarize(o options, workers []*worker, elapsed time.Duration) result {
	r := result{
		Op:           o.op,
		Serializable: o.serializable,
		Clients:      o.clients,
		Conns:        o.conns,
		Endpoints:    o.endpoints,
		TargetLeader: o.targetLeader,
		ValueSize:    o.valueSize,
		KeySpace:     o.keySpace,
		Errors:       map[string]int{},
		ElapsedS:     elapsed.Seconds(),
	}
	var all []time.Duration
	for _, w := range workers {
		all = append(all, w.samples...)
		for kind, n := range w.errors {
			r.Errors[kind] += n
			r.ErrorCount += n
		}
	}
	r.Ops = int64(len(all))
	if elapsed > 0 {
		r.ThroughputOpsS = float64(r.Ops) / elapsed.Seconds()
	}
	if len(all) > 0 {
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		r.LatencyMs = latencyMs{
			P50:  ms(percentile(all, 50)),
			P90:  ms(percentile(all, 90)),
			P99:  ms(percentile(all, 99)),
			Max:  ms(all[len(all)-1]),
			Mean: ms(sum) / float64(len(all)),
		}
	}
	return r
}

func main() {
	o := parseFlags(os.Args[1:])
	conns, err := connectAll(&o)
	if err != nil {
		fail(1, "%v", err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	value := makeValue(o.valueSize, o.seed)
	if o.preload {
		if err := preload(o, conns, value); err != nil {
			fail(1, "%v", err)
		}
	}
	cpuBefore := cpuTime()
	workers, elapsed := run(o, conns, value)
	cpu := cpuTime() - cpuBefore
	r := summarize(o, workers, elapsed)
	r.GeneratorCPUS = cpu.Seconds()
	if elapsed > 0 {
		r.GeneratorCores = cpu.Seconds() / elapsed.Seconds()
	}
	out, err := json.Marshal(r)
	if err != nil {
		fail(1, "cannot encode the result: %v", err)
	}
	fmt.Println(string(out))
	if r.Ops == 0 && r.ErrorCount > 0 {
		fail(1, "no request succeeded (%d errors: %v)", r.ErrorCount, r.Errors)
	}
}
