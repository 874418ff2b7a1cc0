package server_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
)

// TestShutdownDrainsInFlightWork: SIGTERM while a streamed turn, a unary
// turn and a watch are open. The turns run to their end and are answered and
// stored, the watch gets an end event, new work is refused once the servers
// stop accepting, and Serve returns nil.
func TestShutdownDrainsInFlightWork(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	in := servertest.Start(t, map[string]string{
		"KGENTS_DATA_DIR": dir, "SOUL_CHUNK_DELAY": "60ms", "SHUTDOWN_DRAIN": "0.3", "SHUTDOWN_TIMEOUT": "20s",
	})
	streamed := createSession(t, in, bob, `{}`)
	unary := createSession(t, in, bob, `{}`)
	watch, _ := watchEvents(t, in, bob, streamed.ID)

	long := `{"message":"Walk me through how you would plan a careful migration of a large system","mode":"explore"}`
	turn := in.Stream(t, "POST", "/v1/kgent/sessions/"+streamed.ID+"/messages", bob, long)
	turnReader := servertest.NewSSEReader(turn.Body)
	if _, err := turnReader.Next(); err != nil { // the message event: the turn is under way
		t.Fatal(err)
	}
	unaryDone := make(chan int, 1)
	go func() {
		resp, _ := in.Do(t, "POST", "/v1/kgent/sessions/"+unary.ID+"/messages", bob, `{"message":"`+long[12:60]+`","stream":false,"mode":"explore"}`)
		unaryDone <- resp.StatusCode
	}()
	time.Sleep(150 * time.Millisecond) // both turns in flight

	stopped := in.StopAsync()
	began := time.Now()

	// The streamed turn finishes for its caller.
	rest := turnReader.ReadAll(t)
	if len(rest) == 0 || rest[len(rest)-1].Name != "complete" {
		t.Fatalf("in-flight streamed turn did not complete: %v", names(rest))
	}
	select {
	case code := <-unaryDone:
		if code != http.StatusOK {
			t.Errorf("in-flight unary turn: %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("unary turn never answered")
	}
	// The watch ended with the shutdown, after relaying what it could.
	evs := readUntil(t, watch, "end")
	if d := evs[len(evs)-1].JSON(t); d["reason"] != "shutdown" {
		t.Errorf("watch end %v", d)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("server did not stop")
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Errorf("shutdown took %v, beyond SHUTDOWN_TIMEOUT", took)
	}

	// Both replies were stored: a new process on the same data sees them.
	again := servertest.Start(t, map[string]string{"KGENTS_DATA_DIR": dir})
	for _, id := range []string{streamed.ID, unary.ID} {
		if got := getSession(t, again, bob, id); got.MessageCount != 2 {
			t.Errorf("session %s after shutdown: %+v", id, got)
		}
	}
}
