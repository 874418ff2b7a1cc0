package billing

import (
	"slices"
	"testing"
)

// from copies the entries from position p on.
func (f *idFIFO) from(p int) []fifoEntry {
	var out []fifoEntry
	for i := p; i < f.end; i++ {
		out = append(out, f.at(i))
	}
	return out
}

// The fifo against a plain slice as its model, across chunk boundaries:
// what is listed at each position, what a release frees, and that a
// truncate (an overlay's rollback) restores the list exactly.
func TestIDFIFO(t *testing.T) {
	t.Parallel()
	entry := func(i int) fifoEntry { return fifoEntry{k: idKey{byte(i), byte(i >> 8), byte(i >> 16)}, at: int64(i)} }
	tests := []struct {
		name                       string
		push, release, truncate    int // entries pushed, then released before, then truncated to
		wantChunks, wantFirstChunk int
	}{
		{name: "within one chunk", push: 10, release: 5, truncate: 7, wantChunks: 1},
		{name: "nothing released", push: 3 * fifoChunk, release: 0, truncate: 3 * fifoChunk, wantChunks: 3},
		{name: "release stops at a chunk not wholly consumed", push: 3*fifoChunk + 5, release: 2*fifoChunk - 1, truncate: 3*fifoChunk + 5, wantChunks: 3, wantFirstChunk: 1},
		{name: "release whole chunks", push: 3*fifoChunk + 5, release: 2 * fifoChunk, truncate: 3*fifoChunk + 5, wantChunks: 2, wantFirstChunk: 2},
		{name: "truncate across chunks", push: 4*fifoChunk + 1, release: fifoChunk, truncate: 2*fifoChunk - 3, wantChunks: 1, wantFirstChunk: 1},
		{name: "truncate to a chunk boundary", push: 3 * fifoChunk, release: 0, truncate: fifoChunk, wantChunks: 1},
		{name: "everything released", push: 2 * fifoChunk, release: 2 * fifoChunk, truncate: 2 * fifoChunk, wantChunks: 0, wantFirstChunk: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var f idFIFO
			var model []fifoEntry
			for i := range tc.push {
				f.push(entry(i))
				model = append(model, entry(i))
			}
			f.release(tc.release)
			f.truncate(tc.truncate)
			model = model[:tc.truncate]
			if len(f.chunks) != tc.wantChunks || f.first != tc.wantFirstChunk*fifoChunk {
				t.Errorf("%d chunks from position %d, want %d from %d", len(f.chunks), f.first, tc.wantChunks, tc.wantFirstChunk*fifoChunk)
			}
			if f.end != len(model) {
				t.Fatalf("end %d, want %d", f.end, len(model))
			}
			if got, want := f.from(f.first), model[f.first:]; !slices.Equal(got, want) {
				t.Errorf("listed from %d: %d entries, want %d (or different ones)", f.first, len(got), len(want))
			}
			// The fifo goes on after a truncate as if nothing had been pushed
			// past it, reusing the spare chunk.
			for i := tc.truncate; i < tc.truncate+fifoChunk+1; i++ {
				f.push(entry(i))
				model = append(model, entry(i))
			}
			if got, want := f.from(f.first), model[f.first:]; !slices.Equal(got, want) {
				t.Errorf("after pushing on: %d entries, want %d (or different ones)", len(got), len(want))
			}
		})
	}
}
