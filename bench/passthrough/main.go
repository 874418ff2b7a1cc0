// Command passthrough is the load benchmark's baseline: the same REST route
// (POST /v1/soul/dialogue) through a bare grpc-gateway to a gRPC server over
// loopback, with no interceptors, the stock JSON marshaler and a handler
// that does no work. kgentsd's figures are read against it (docs/benchmarks.md).
//
//	go run ./bench/passthrough -http 127.0.0.1:18090
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"

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
	flag.Parse()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
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
	mux := runtime.NewServeMux()
	if err := soulv1.RegisterSoulServiceHandler(context.Background(), mux, conn); err != nil {
		log.Fatal(err)
	}
	log.Printf("pass-through on http://%s", *httpAddr)
	log.Fatal(http.ListenAndServe(*httpAddr, mux))
}
