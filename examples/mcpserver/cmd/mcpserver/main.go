// Command mcpserver runs the example MCP server against a Valet broker.
//
//	VALET_URL=http://127.0.0.1:8080 VALET_CLIENT_ID=tool-server VALET_CLIENT_SECRET=... \
//	  go run ./examples/mcpserver/cmd/mcpserver --addr 127.0.0.1:9091 --url http://127.0.0.1:9091
//
// Its resource (the audience its tokens must name) is --url + /mcp.
package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/valet-dev/valet/examples/mcpserver"
	"github.com/valet-dev/valet/verify"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9091", "listen address")
	public := flag.String("url", "http://127.0.0.1:9091", "this server's public base URL")
	scopes := flag.String("scopes", "", "space-separated scopes to publish as scopes_supported (e.g. template:support tickets.read)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	base := strings.TrimSuffix(*public, "/")
	v, err := verify.New(verify.Config{Issuer: os.Getenv("VALET_URL"), Audience: base + mcpserver.Path,
		ClientID: os.Getenv("VALET_CLIENT_ID"), ClientSecret: os.Getenv("VALET_CLIENT_SECRET"), Logger: log,
		PublicURL: base, Scopes: strings.Fields(*scopes)})
	if err != nil {
		log.Error("configuring the verifier", "err", err)
		os.Exit(1)
	}
	s, err := mcpserver.New(v)
	if err != nil {
		log.Error("building the server", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go v.Run(ctx)
	srv := &http.Server{Addr: *addr, Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Shutdown(context.Background()) }()
	log.Info("MCP server listening", "addr", *addr, "resource", v.ResourceMetadataURL())
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Error("serving", "err", err)
		os.Exit(1)
	}
}
