// Command refplugin is the upstream reference KMS v2 plugin used as the baseline in
// scripts/bench-kube-kms: the gRPC server of k8s.io/kms/pkg/service (NewGRPCService, what
// upstream offers plugin authors) around a minimal AES-256-GCM service.Service — a random key
// generated at start (lost at exit), a constant key_id, Status always healthy.
//
//	refplugin -socket /tmp/ref.sock
//
// Wrap format: 12-byte random nonce || AES-256-GCM(seal of the plaintext), with the key_id as
// additional authenticated data. No annotations.
package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/kms/pkg/service"
)

const keyID = "refplugin-aes256gcm-1"

type aesGCMService struct {
	aead cipher.AEAD
}

var _ service.Service = (*aesGCMService)(nil)

func newAESGCMService() (*aesGCMService, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &aesGCMService{aead: aead}, nil
}

func (s *aesGCMService) Encrypt(_ context.Context, _ string, data []byte) (*service.EncryptResponse, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, ns, ns+len(data)+s.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	out = s.aead.Seal(out, out[:ns], data, []byte(keyID))
	return &service.EncryptResponse{Ciphertext: out, KeyID: keyID}, nil
}

func (s *aesGCMService) Decrypt(_ context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	if req.KeyID != keyID {
		return nil, fmt.Errorf("unknown key_id %q", req.KeyID)
	}
	ns := s.aead.NonceSize()
	if len(req.Ciphertext) < ns+s.aead.Overhead() {
		return nil, errors.New("ciphertext too short")
	}
	return s.aead.Open(nil, req.Ciphertext[:ns], req.Ciphertext[ns:], []byte(keyID))
}

func (s *aesGCMService) Status(context.Context) (*service.StatusResponse, error) {
	return &service.StatusResponse{Version: "v2", Healthz: "ok", KeyID: keyID}, nil
}

func main() {
	socket := flag.String("socket", "", "Unix socket path to listen on (required; a stale file is removed)")
	timeout := flag.Duration("timeout", 3*time.Second, "gRPC connection timeout (NewGRPCService's timeout)")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "refplugin: -socket is required")
		os.Exit(2)
	}
	svc, err := newAESGCMService()
	if err != nil {
		fmt.Fprintln(os.Stderr, "refplugin:", err)
		os.Exit(1)
	}
	if err := os.Remove(*socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "refplugin:", err)
		os.Exit(1)
	}
	grpcSvc := service.NewGRPCService(*socket, *timeout, svc)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		grpcSvc.Shutdown()
	}()

	fmt.Fprintf(os.Stderr, "refplugin: listening on %s (key_id %s)\n", *socket, keyID)
	err = grpcSvc.ListenAndServe()
	_ = os.Remove(*socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "refplugin:", err)
		os.Exit(1)
	}
}
