// Command passthrough is the load benchmark's baseline: the same REST route
// (POST /v1/soul/dialogue) through a bare grpc-gateway to a gRPC server over
// loopback, with no interceptors, the stock JSON marshaler and a handler
// that does no work; that gRPC server, on -grpc, is the native baseline (a
// bare grpc-go server answering the same message). kgentsd's figures are
// read against them (docs/benchmarks.md). GET /mallocs on the HTTP address
// answers the process's heap allocations so far (runtime/metrics), for
// allocations per call.
//
//	go run ./bench/passthrough -http 127.0.0.1:18090 -grpc 127.0.0.1:18091
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"runtime/metrics"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

type echo struct {
	soulv1.UnimplementedSoulServiceServer
}

func (echo) Dialogue(_ context.Context, req *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
	return &soulv1.DialogueResponse{Response: req.GetPrompt(), Mode: req.GetMode(), Budget: req.GetBudget()}, nil
}

func main() {
	httpAddr := flag.String("http", "127.0.0.1:18090", "HTTP listen address")
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "gRPC listen address (the bare grpc-go baseline)")
	flag.Parse()
	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	soulv1.RegisterSoulServiceServer(gs, echo{})
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	gw := runtime.NewServeMux()
	if err := soulv1.RegisterSoulServiceHandler(context.Background(), gw, conn); err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", gw)
	mux.HandleFunc("GET /mallocs", func(w http.ResponseWriter, _ *http.Request) {
		s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
		metrics.Read(s)
		_, _ = fmt.Fprintln(w, s[0].Value.Uint64())
	})
	log.Printf("pass-through on http://%s, bare gRPC on %s", *httpAddr, lis.Addr())
	log.Fatal(http.ListenAndServe(*httpAddr, mux))
}
