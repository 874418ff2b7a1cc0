package server_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// benchEnv runs the full chain (every interceptor) with a tier that never
// throttles, so the benchmarks measure work, not 429s.
func benchEnv(b *testing.B) map[string]string {
	dir := b.TempDir()
	tiers := dir + "/tiers.json"
	if err := writeTestFile(tiers, `{"enterprise":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":0}}`); err != nil {
		b.Fatal(err)
	}
	return map[string]string{"LOG_LEVEL": "warn", "KGENTS_TIERS_FILE": tiers}
}

// BenchmarkDialogueGRPC: one unary Soul.Dialogue (template engine) over
// gRPC through the whole interceptor chain, 32 concurrent callers.
func BenchmarkDialogueGRPC(b *testing.B) {
	in := servertest.Start(b, benchEnv(b))
	client := soulv1.NewSoulServiceClient(in.Conn)
	ctx := servertest.Key(context.Background(), carol)
	req := &soulv1.DialogueRequest{Prompt: "What should I focus on this week?", Mode: soulv1.Mode_MODE_ADVISE, Budget: soulv1.Budget_BUDGET_DIALOGUE}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.Dialogue(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDialogueREST: the same call as POST /v1/soul/dialogue.
func BenchmarkDialogueREST(b *testing.B) {
	in := servertest.Start(b, benchEnv(b))
	body := []byte(`{"prompt":"What should I focus on this week?","mode":"advise","budget":"dialogue"}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", in.URL+"/v1/soul/dialogue", bytes.NewReader(body))
			req.Header.Set("X-API-Key", carol)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
