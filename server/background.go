package server

import (
	"context"
	"slices"
	"sync"
)

// tasks are the goroutines that run while the server serves (the servers'
// Serve loops, background loops), by name, so a shutdown bounded by its
// deadline can say which did not end.
type tasks struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	running map[string]int
}

// Go runs fn as the task name.
func (b *tasks) Go(name string, fn func()) {
	b.mu.Lock()
	if b.running == nil {
		b.running = map[string]int{}
	}
	b.running[name]++
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer func() {
			b.mu.Lock()
			if b.running[name]--; b.running[name] == 0 {
				delete(b.running, name)
			}
			b.mu.Unlock()
		}()
		fn()
	}()
}

// wait waits until every task has ended or ctx ends, and returns the names
// of those still running then (none: all ended).
func (b *tasks) wait(ctx context.Context) []string {
	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	left := make([]string, 0, len(b.running))
	for name := range b.running {
		left = append(left, name)
	}
	slices.Sort(left)
	return left
}
