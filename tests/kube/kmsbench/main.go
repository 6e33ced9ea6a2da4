// Command kmsbench drives KMS v2 RPCs against a plugin the way kube-apiserver talks to it: the
// generated k8s.io/kms/apis/v2 gRPC client over one grpc.ClientConn to unix://<socket> (RPCs
// multiplexed on it), `:authority` localhost, wait-for-ready, a per-call deadline and a random
// UUID per request. For Decrypt it first calls Encrypt once, then decrypts that ciphertext again
// and again with the returned key_id and annotations.
//
// It samples the server process (-pid) from /proc before and after the measured interval: CPU
// (utime+stime of /proc/<pid>/stat) and RSS (VmRSS of /proc/<pid>/status). It prints one JSON
// line.
//
//	kmsbench -socket /run/kms.sock -op decrypt -concurrency 16 -duration 5s -warmup 1s -pid 1234
//
// `kmsbench report` reads such JSON lines (several runs per server, operation and concurrency)
// on stdin and prints a Markdown table of medians; see report.go.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	kmsv2 "k8s.io/kms/apis/v2"
)

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every Linux architecture Go
// supports here; sysconf(_SC_CLK_TCK) would need cgo).
const clockTicksPerSecond = 100

type result struct {
	Label               string  `json:"label,omitempty"`
	Op                  string  `json:"op"`
	Concurrency         int     `json:"concurrency"`
	PlaintextBytes      int     `json:"plaintext_bytes"`
	DurationS           float64 `json:"duration_s"`
	RPCs                int64   `json:"rpcs"`
	RPCPerS             float64 `json:"rpc_per_s"`
	P50Us               float64 `json:"p50_us"`
	P90Us               float64 `json:"p90_us"`
	P99Us               float64 `json:"p99_us"`
	MaxUs               float64 `json:"max_us"`
	ServerCPUUsPerRPC   float64 `json:"server_cpu_us_per_rpc"`
	ServerCPUUtil       float64 `json:"server_cpu_cores"`
	ClientCPUUsPerRPC   float64 `json:"client_cpu_us_per_rpc"`
	ServerRSSKiBBefore  int64   `json:"server_rss_kib_before"`
	ServerRSSKiB        int64   `json:"server_rss_kib"`
	ServerRSSPeakKiB    int64   `json:"server_rss_peak_kib"`
	ServerThreads       int64   `json:"server_threads"`
	ServerReadsPerRPC   float64 `json:"server_read_syscalls_per_rpc"`
	ServerWritesPerRPC  float64 `json:"server_write_syscalls_per_rpc"`
	ServerCtxswPerRPC   float64 `json:"server_ctx_switches_per_rpc"`
	ClientReadsPerRPC   float64 `json:"client_read_syscalls_per_rpc"`
	ClientWritesPerRPC  float64 `json:"client_write_syscalls_per_rpc"`
	ClientCtxswPerRPC   float64 `json:"client_ctx_switches_per_rpc"`
	Errors              int64   `json:"errors"`
	FirstError          string  `json:"first_error,omitempty"`
	CiphertextBytes     int     `json:"ciphertext_bytes,omitempty"`
	KeyID               string  `json:"key_id,omitempty"`
	AnnotationsReturned int     `json:"annotations,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "report" {
		if err := report(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "kmsbench report:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kmsbench:", err)
		os.Exit(1)
	}
}

func run() error {
	socket := flag.String("socket", "", "plugin Unix socket path (required)")
	op := flag.String("op", "decrypt", "RPC to drive: encrypt, decrypt or status")
	concurrency := flag.Int("concurrency", 1, "RPCs in flight at once (goroutines sharing the one connection)")
	duration := flag.Duration("duration", 5*time.Second, "measured interval")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before the measured interval")
	size := flag.Int("size", 32, "plaintext bytes for Encrypt (32: a DEK seed, as kube-apiserver sends)")
	pid := flag.Int("pid", 0, "server process to sample CPU and RSS from /proc (0: do not sample)")
	timeout := flag.Duration("timeout", 3*time.Second, "per-call deadline (kube-apiserver's default KMS timeout)")
	authority := flag.String("authority", "localhost", "HTTP/2 :authority (kube-apiserver >= 1.32 sends localhost; empty: grpc-go's default for the target)")
	label := flag.String("label", "", "free text copied into the JSON output (e.g. the server's name)")
	flag.Parse()

	if *socket == "" {
		return errors.New("-socket is required")
	}
	if *concurrency < 1 {
		return errors.New("-concurrency must be >= 1")
	}
	if *duration <= 0 || *warmup < 0 {
		return errors.New("-duration must be > 0 and -warmup >= 0")
	}
	*op = strings.ToLower(*op)
	if *op != "encrypt" && *op != "decrypt" && *op != "status" {
		return fmt.Errorf("-op %q: want encrypt, decrypt or status", *op)
	}

	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
	}
	if *authority != "" {
		opts = append(opts, grpc.WithAuthority(*authority))
	}
	conn, err := grpc.NewClient("unix://"+*socket, opts...)
	if err != nil {
		return fmt.Errorf("grpc client for unix://%s: %w", *socket, err)
	}
	defer conn.Close()
	client := kmsv2.NewKeyManagementServiceClient(conn)

	res := result{Label: *label, Op: *op, Concurrency: *concurrency, PlaintextBytes: *size}

	// One Status and one Encrypt (and, for decrypt, a checked Decrypt) before anything is timed:
	// this also establishes the connection.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := client.Status(ctx, &kmsv2.StatusRequest{})
	cancel()
	if err != nil {
		return fmt.Errorf("Status: %w", err)
	}
	if st.Healthz != "ok" {
		return fmt.Errorf("Status: healthz %q", st.Healthz)
	}
	seed := make([]byte, *size)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	ctx, cancel = context.WithTimeout(context.Background(), *timeout)
	enc, err := client.Encrypt(ctx, &kmsv2.EncryptRequest{Plaintext: seed, Uid: uuid.NewString()})
	cancel()
	if err != nil {
		return fmt.Errorf("Encrypt: %w", err)
	}
	if enc.KeyId != st.KeyId {
		return fmt.Errorf("Encrypt returned key_id %q, Status reports %q", enc.KeyId, st.KeyId)
	}
	res.CiphertextBytes, res.KeyID, res.AnnotationsReturned = len(enc.Ciphertext), enc.KeyId, len(enc.Annotations)
	ctx, cancel = context.WithTimeout(context.Background(), *timeout)
	dec, err := client.Decrypt(ctx, &kmsv2.DecryptRequest{
		Ciphertext: enc.Ciphertext, Uid: uuid.NewString(), KeyId: enc.KeyId, Annotations: enc.Annotations,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("Decrypt: %w", err)
	}
	if !bytes.Equal(dec.Plaintext, seed) {
		return errors.New("Decrypt did not return the plaintext given to Encrypt")
	}

	// One call of the chosen RPC; what each worker runs in a loop.
	var call func(ctx context.Context) error
	switch *op {
	case "encrypt":
		call = func(ctx context.Context) error {
			_, err := client.Encrypt(ctx, &kmsv2.EncryptRequest{Plaintext: seed, Uid: uuid.NewString()})
			return err
		}
	case "decrypt":
		call = func(ctx context.Context) error {
			_, err := client.Decrypt(ctx, &kmsv2.DecryptRequest{
				Ciphertext: enc.Ciphertext, Uid: uuid.NewString(), KeyId: enc.KeyId, Annotations: enc.Annotations,
			})
			return err
		}
	case "status":
		call = func(ctx context.Context) error {
			_, err := client.Status(ctx, &kmsv2.StatusRequest{})
			return err
		}
	}

	// Phases: 0 warm-up (not recorded), 1 measured, 2 stop. A request is recorded when it
	// started in phase 1.
	var phase atomic.Int32
	var errCount atomic.Int64
	var firstErr atomic.Value
	lat := make([][]int64, *concurrency)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			mine := make([]int64, 0, 1<<14)
			for {
				p := phase.Load()
				if p == 2 {
					break
				}
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				t0 := time.Now()
				err := call(ctx)
				d := time.Since(t0)
				cancel()
				if p != 1 {
					continue
				}
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mine = append(mine, int64(d))
			}
			lat[w] = mine
		}(w)
	}

	time.Sleep(*warmup)
	cpu0, err := procCPUTicks(*pid)
	if err != nil {
		return err
	}
	res.ServerRSSKiBBefore, _, _, err = procStatus(*pid)
	if err != nil {
		return err
	}
	self0 := selfCPU()
	srvIO0, cliIO0 := procIO(*pid), procIO(os.Getpid())
	t0 := time.Now()
	phase.Store(1)
	time.Sleep(*duration)
	phase.Store(2)
	elapsed := time.Since(t0)
	wg.Wait() // requests started in the interval finish; their server CPU is counted
	cpu1, err := procCPUTicks(*pid)
	if err != nil {
		return err
	}
	self1 := selfCPU()
	srvIO1, cliIO1 := procIO(*pid), procIO(os.Getpid())
	res.ServerRSSKiB, res.ServerRSSPeakKiB, res.ServerThreads, err = procStatus(*pid)
	if err != nil {
		return err
	}

	var all []int64
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	res.DurationS = elapsed.Seconds()
	res.RPCs = int64(len(all))
	res.Errors = errCount.Load()
	if v := firstErr.Load(); v != nil {
		res.FirstError = v.(string)
	}
	res.RPCPerS = float64(res.RPCs) / elapsed.Seconds()
	res.P50Us = percentileUs(all, 0.50)
	res.P90Us = percentileUs(all, 0.90)
	res.P99Us = percentileUs(all, 0.99)
	if len(all) > 0 {
		res.MaxUs = float64(all[len(all)-1]) / 1e3
	}
	if n := res.RPCs + res.Errors; n > 0 {
		if *pid > 0 {
			us := float64(cpu1-cpu0) * 1e6 / clockTicksPerSecond
			res.ServerCPUUsPerRPC = us / float64(n)
			res.ServerCPUUtil = us / 1e6 / elapsed.Seconds()
		}
		res.ClientCPUUsPerRPC = float64((self1 - self0).Microseconds()) / float64(n)
		per := func(a, b int64) float64 { return float64(b-a) / float64(n) }
		if *pid > 0 {
			res.ServerReadsPerRPC = per(srvIO0.reads, srvIO1.reads)
			res.ServerWritesPerRPC = per(srvIO0.writes, srvIO1.writes)
			res.ServerCtxswPerRPC = per(srvIO0.ctxsw, srvIO1.ctxsw)
		}
		res.ClientReadsPerRPC = per(cliIO0.reads, cliIO1.reads)
		res.ClientWritesPerRPC = per(cliIO0.writes, cliIO1.writes)
		res.ClientCtxswPerRPC = per(cliIO0.ctxsw, cliIO1.ctxsw)
	}

	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// percentileUs: nearest-rank percentile of sorted nanosecond durations, in microseconds.
func percentileUs(sorted []int64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / 1e3
}

// procCPUTicks: utime+stime of process pid (all its threads), in clock ticks.
func procCPUTicks(pid int) (int64, error) {
	if pid <= 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces; fields after it
	// start at field 3 (state). utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return ut + st, nil
}

// procStatus: VmRSS and VmHWM (KiB) and the thread count of process pid.
func procStatus(pid int) (rss, hwm, threads int64, err error) {
	if pid <= 0 {
		return 0, 0, 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, perr := strconv.ParseInt(f[0], 10, 64)
		if perr != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		case "Threads":
			threads = n
		}
	}
	return rss, hwm, threads, nil
}

type ioCounts struct{ reads, writes, ctxsw int64 }

// procIO: read- and write-class system calls of process pid (syscr/syscw of /proc/<pid>/io,
// which count every read/recvmsg/write/sendmsg-family call of all its threads) and its
// voluntary+involuntary context switches summed over its threads. Zero when unreadable.
func procIO(pid int) ioCounts {
	var c ioCounts
	if pid <= 0 {
		return c
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "syscr":
				c.reads = n
			case "syscw":
				c.writes = n
			}
		}
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				c.ctxsw += n
			}
		}
	}
	return c
}

// selfCPU: user+system CPU time of this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
