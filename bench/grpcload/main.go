// Command grpcload is the load benchmark's native gRPC client: -c callers
// send Soul.Dialogue as fast as they are answered for -d, after a warm-up,
// then it prints a RESULT line like scripts/dialogue.lua's for wrk:
//
//	RESULT requests=… duration_s=… rps=… p50_ms=… p99_ms=… errors=…
//
//	go run ./bench/grpcload -addr 127.0.0.1:18081 -key kg_dev_carol -c 32 -d 20s
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18081", "gRPC server address")
	key := flag.String("key", "", "API key (x-api-key metadata); empty sends none")
	conns := flag.Int("c", 32, "concurrent callers")
	conn := flag.Int("conns", 2, "HTTP/2 connections the callers share")
	dur := flag.Duration("d", 20*time.Second, "measured duration")
	warm := flag.Duration("warmup", 3*time.Second, "unmeasured warm-up")
	flag.Parse()
	if err := run(*addr, *key, *conns, *conn, *dur, *warm); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(addr, key string, callers, nconns int, dur, warm time.Duration) error {
	clients := make([]soulv1.SoulServiceClient, max(nconns, 1))
	for i := range clients {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer func() { _ = cc.Close() }()
		clients[i] = soulv1.NewSoulServiceClient(cc)
	}
	ctx := context.Background()
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-api-key", key)
	}
	req := &soulv1.DialogueRequest{Prompt: "What should I focus on this week?", Mode: soulv1.Mode_MODE_ADVISE, Budget: soulv1.Budget_BUDGET_DIALOGUE}
	phase := func(d time.Duration, record bool) (lat []time.Duration, errs int, took time.Duration) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := time.Now()
		end := start.Add(d)
		for i := range callers {
			client := clients[i%len(clients)]
			wg.Go(func() {
				var mine []time.Duration
				bad := 0
				for time.Now().Before(end) {
					t := time.Now()
					if _, err := client.Dialogue(ctx, req); err != nil {
						bad++
						continue
					}
					if record {
						mine = append(mine, time.Since(t))
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				errs += bad
				mu.Unlock()
			})
		}
		wg.Wait()
		return lat, errs, time.Since(start)
	}
	phase(warm, false)
	lat, errs, took := phase(dur, true)
	if len(lat) == 0 {
		return fmt.Errorf("no successful call (%d errors)", errs)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	fmt.Printf("RESULT requests=%d duration_s=%.2f rps=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
		len(lat), took.Seconds(), float64(len(lat))/took.Seconds(), q(0.5), q(0.99), errs)
	return nil
}
