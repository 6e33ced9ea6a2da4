package main

// `kmsbench report -a envelope -b reference < runs.jsonl` prints a Markdown table of the
// medians over repeated runs, per operation and concurrency, for server A and server B (the
// "label" of each JSON line) and the ratio A/B of the medians.

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	a := fs.String("a", "envelope", "label of the first server (ratio numerator)")
	b := fs.String("b", "reference", "label of the second server (ratio denominator)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runs, err := readRuns(os.Stdin)
	if err != nil {
		return err
	}

	type cell struct {
		op string
		c  int
	}
	groups := map[cell]map[string][]result{}
	var cells []cell
	errs := map[string]int64{}
	for _, r := range runs {
		k := cell{r.Op, r.Concurrency}
		if groups[k] == nil {
			groups[k] = map[string][]result{}
			cells = append(cells, k)
		}
		groups[k][r.Label] = append(groups[k][r.Label], r)
		errs[r.Label] += r.Errors
	}
	opOrder := map[string]int{"decrypt": 0, "encrypt": 1, "status": 2}
	sort.SliceStable(cells, func(i, j int) bool {
		if cells[i].op != cells[j].op {
			return opOrder[cells[i].op] < opOrder[cells[j].op]
		}
		return cells[i].c < cells[j].c
	})

	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintln(w, "| RPC | concurrency | server | runs | RPC/s [min–max] | p50 µs | p99 µs | server CPU µs/RPC [min–max] | server RSS MiB |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, k := range cells {
		g := groups[k]
		type med struct{ rps, p50, p99, cpu, rss float64 }
		meds := map[string]med{}
		for _, label := range []string{*a, *b} {
			rs := g[label]
			if len(rs) == 0 {
				continue
			}
			rps := pick(rs, func(r result) float64 { return r.RPCPerS })
			cpu := pick(rs, func(r result) float64 { return r.ServerCPUUsPerRPC })
			m := med{
				rps: median(rps),
				p50: median(pick(rs, func(r result) float64 { return r.P50Us })),
				p99: median(pick(rs, func(r result) float64 { return r.P99Us })),
				cpu: median(cpu),
				rss: median(pick(rs, func(r result) float64 { return float64(r.ServerRSSKiB) / 1024 })),
			}
			meds[label] = m
			fmt.Fprintf(w, "| %s | %d | %s | %d | %s [%s–%s] | %.0f | %.0f | %.1f [%.1f–%.1f] | %.1f |\n",
				title(k.op), k.c, label, len(rs), thousands(m.rps), thousands(minOf(rps)), thousands(maxOf(rps)),
				m.p50, m.p99, m.cpu, minOf(cpu), maxOf(cpu), m.rss)
		}
		ma, okA := meds[*a]
		mb, okB := meds[*b]
		if okA && okB {
			fmt.Fprintf(w, "| %s | %d | **%s / %s** | | **%s** | **%s** | **%s** | **%s** | **%s** |\n",
				title(k.op), k.c, *a, *b, ratio(ma.rps, mb.rps), ratio(ma.p50, mb.p50), ratio(ma.p99, mb.p99),
				ratio(ma.cpu, mb.cpu), ratio(ma.rss, mb.rss))
		}
	}

	// Where the CPU goes besides the server's own work: the driver shares the machine, and how
	// a server batches its HTTP/2 writes decides how often the client must wake up and read.
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| RPC | concurrency | server | client CPU µs/RPC | server write(2)+writev(2) calls/RPC (send(2) not counted) | client read syscalls/RPC | server context switches/RPC |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---:|")
	for _, k := range cells {
		for _, label := range []string{*a, *b} {
			rs := groups[k][label]
			if len(rs) == 0 {
				continue
			}
			fmt.Fprintf(w, "| %s | %d | %s | %.1f | %.2f | %.2f | %.2f |\n", title(k.op), k.c, label,
				median(pick(rs, func(r result) float64 { return r.ClientCPUUsPerRPC })),
				median(pick(rs, func(r result) float64 { return r.ServerWritesPerRPC })),
				median(pick(rs, func(r result) float64 { return r.ClientReadsPerRPC })),
				median(pick(rs, func(r result) float64 { return r.ServerCtxswPerRPC })))
		}
	}

	var labels []string
	for l := range errs {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	var parts []string
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s %d", l, errs[l]))
	}
	fmt.Fprintf(w, "\nFailed RPCs over all runs: %s.\n", strings.Join(parts, ", "))
	return nil
}

func readRuns(r io.Reader) ([]result, error) {
	var runs []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || !strings.HasPrefix(line, "{") {
			continue
		}
		var res result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		runs = append(runs, res)
	}
	return runs, sc.Err()
}

func pick(rs []result, f func(result) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		if x < m {
			m = x
		}
	}
	return m
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		if x > m {
			m = x
		}
	}
	return m
}

func ratio(x, y float64) string {
	if y == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", x/y)
}

func title(op string) string {
	if op == "" {
		return op
	}
	return strings.ToUpper(op[:1]) + op[1:]
}

// thousands formats a rate as an integer with comma separators.
func thousands(x float64) string {
	s := fmt.Sprintf("%.0f", x)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
