// Command toolserver runs the example tool server against a Valet broker.
//
//	VALET_URL=http://127.0.0.1:8080 VALET_CLIENT_ID=tool-server VALET_CLIENT_SECRET=... \
//	  TOOLSERVER_PUBLIC_URL=http://127.0.0.1:9090 go run ./examples/toolserver/cmd/toolserver --addr 127.0.0.1:9090 --audience https://tools.example.com
package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/verify"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9090", "listen address")
	audience := flag.String("audience", "https://tools.example.com", "this server's audience")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	v, err := verify.New(verify.Config{Issuer: os.Getenv("VALET_URL"), Audience: *audience,
		ClientID: os.Getenv("VALET_CLIENT_ID"), ClientSecret: os.Getenv("VALET_CLIENT_SECRET"), Logger: log,
		PublicURL: os.Getenv("TOOLSERVER_PUBLIC_URL")})
	if err != nil {
		log.Error("configuring the verifier", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go v.Run(ctx)
	srv := &http.Server{Addr: *addr, Handler: toolserver.New(v), ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Shutdown(context.Background()) }()
	log.Info("tool server listening", "addr", *addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Error("serving", "err", err)
		os.Exit(1)
	}
}
