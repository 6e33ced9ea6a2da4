// Command etcd is a minimal single-member etcd 3.6 server for envelope's end-to-end tests.
//
// It wraps go.etcd.io/etcd/server/v3/embed so that scripts/kube-peers can build a real etcd
// server from Go modules, pinned to the etcd version kube-apiserver is built against. It is a
// test fixture, not a production etcd: one member, plain HTTP on loopback by default.
//
// On success it prints one line to stdout, "etcd ready: client=<url> name=<name> data-dir=<dir>",
// once the server serves client requests, then runs until SIGINT/SIGTERM, on which it shuts
// down cleanly and exits 0. Exits non-zero if the server fails to start or stops with an error.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	name := flag.String("name", "default", "member name")
	dataDir := flag.String("data-dir", "", "data directory (required)")
	listenClient := flag.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve clients on")
	advertiseClient := flag.String("advertise-client-urls", "", "comma-separated client URLs to advertise (default: --listen-client-urls)")
	listenPeer := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated URLs to serve peers on (also advertised)")
	logLevel := flag.String("log-level", "warn", "log level: debug, info, warn, error")
	noFsync := flag.Bool("unsafe-no-fsync", false, "disable fsync (faster tests; data loss on power failure)")
	readyTimeout := flag.Duration("ready-timeout", 60*time.Second, "give up if the server is not ready within this time")
	flag.Parse()

	if *dataDir == "" {
		fail("--data-dir is required")
	}
	if *advertiseClient == "" {
		*advertiseClient = *listenClient
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = mustURLs("--listen-client-urls", *listenClient)
	cfg.AdvertiseClientUrls = mustURLs("--advertise-client-urls", *advertiseClient)
	cfg.ListenPeerUrls = mustURLs("--listen-peer-urls", *listenPeer)
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	// A one-member cluster made of this member's own peer URLs.
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}
	cfg.UnsafeNoFsync = *noFsync

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fail("start: %v", err)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)

	select {
	case <-e.Server.ReadyNotify():
		fmt.Printf("etcd ready: client=%s name=%s data-dir=%s\n", cfg.AdvertiseClientUrls[0].String(), cfg.Name, cfg.Dir)
	case err := <-e.Err():
		e.Close()
		fail("server stopped before it was ready: %v", err)
	case <-time.After(*readyTimeout):
		e.Close()
		fail("server not ready after %s", *readyTimeout)
	case s := <-sigs:
		e.Close()
		fmt.Fprintf(os.Stderr, "etcd: %s before ready, stopped\n", s)
		return
	}

	select {
	case s := <-sigs:
		e.Close()
		fmt.Fprintf(os.Stderr, "etcd: %s, stopped\n", s)
	case err := <-e.Err():
		e.Close()
		fail("server error: %v", err)
	case <-e.Server.StopNotify():
		e.Close()
		fail("server stopped unexpectedly")
	}
}

func mustURLs(flagName, s string) []url.URL {
	urls, err := types.NewURLs(strings.Split(s, ","))
	if err != nil {
		fail("%s: %v", flagName, err)
	}
	return urls
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "etcd: "+format+"\n", args...)
	os.Exit(1)
}
