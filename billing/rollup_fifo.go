package billing

// idFIFO lists the id index's entries in the order they were set, as a
// queue of fixed-size chunks. Positions are absolute and only grow, so an
// overlay can note them and restore them on rollback.
//
// It is chunked, not one slice, because of its size: at the default
// maximum of 4 million ids a flat slice is ~100 MB, and both its growth and
// the compaction of its consumed front copied tens of megabytes at once,
// inside one put, which the rollup's goroutine cannot yield in — it held a
// processor from the calls being served for up to a second
// (BenchmarkIDIndexLongestPut). Here a push allocates at most one chunk and
// dropping the front frees whole chunks; nothing listed ever moves.
type idFIFO struct {
	// chunks are full, but for the last, which fills; chunks[0][0] is at
	// position first, and end is the position after the last entry.
	chunks [][]fifoEntry
	first  int
	end    int
	// spare is one emptied chunk kept for the next push that needs one.
	spare []fifoEntry
}

// fifoChunk is the entries per chunk (96 KB).
const fifoChunk = 4096

func (f *idFIFO) push(e fifoEntry) {
	n := len(f.chunks)
	if n == 0 || len(f.chunks[n-1]) == fifoChunk {
		c := f.spare
		if c == nil {
			c = make([]fifoEntry, 0, fifoChunk)
		}
		f.spare = nil
		f.chunks = append(f.chunks, c)
		n++
	}
	f.chunks[n-1] = append(f.chunks[n-1], e)
	f.end++
}

// at is the entry at position p, first <= p < end.
func (f *idFIFO) at(p int) fifoEntry {
	i := p - f.first
	return f.chunks[i/fifoChunk][i%fifoChunk]
}

// release frees the chunks wholly before position p.
func (f *idFIFO) release(p int) {
	n := 0
	for n < len(f.chunks) && len(f.chunks[n]) == fifoChunk && f.first+fifoChunk <= p {
		if f.spare == nil {
			f.spare = f.chunks[n][:0]
		}
		f.chunks[n] = nil
		f.first += fifoChunk
		n++
	}
	if n > 0 {
		// The chunk list is a few thousand slice headers at most; append
		// reallocates it as its front is dropped.
		f.chunks = f.chunks[n:]
	}
}

// truncate drops the entries from position p on (p >= first: nothing
// before p was released since p was the end).
func (f *idFIFO) truncate(p int) {
	for f.end > p {
		last := len(f.chunks) - 1
		c := f.chunks[last]
		c = c[:len(c)-min(len(c), f.end-p)]
		f.end = f.first + last*fifoChunk + len(c)
		if len(c) > 0 {
			f.chunks[last] = c
			continue
		}
		f.chunks[last] = nil
		f.chunks = f.chunks[:last]
		if f.spare == nil {
			f.spare = c
		}
	}
}
