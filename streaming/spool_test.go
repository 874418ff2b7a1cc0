package streaming

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSpoolRecordRoundTrip(t *testing.T) {
	m := Message{Subject: "kgent.metering.api_request", MsgID: "evt-1", Data: []byte(`{"a":1}`),
		Header: map[string]string{"Ce-Type": "api.request", "Empty": ""}}
	b := encodeRecord(nil, 42, 1234, &m)
	if n := binary.LittleEndian.Uint32(b); int(n) != len(b)-recHeaderLen {
		t.Fatalf("length prefix %d, body %d", n, len(b)-recHeaderLen)
	}
	r, err := decodeRecord(b[recHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	if r.seq != 42 || r.at != 1234 || !reflect.DeepEqual(r.msg, m) {
		t.Fatalf("decoded %+v", r)
	}
	// Every truncation of a body is rejected, never a panic.
	for i := 0; i < len(b)-recHeaderLen; i++ {
		if _, err := decodeRecord(b[recHeaderLen : recHeaderLen+i]); err == nil {
			t.Fatalf("decoded a body truncated to %d bytes", i)
		}
	}
}

func writeSpool(t *testing.T, dir string, segBytes int64, n int) *spool {
	t.Helper()
	s, rec, err := openSpool(dir, segBytes, 0, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	if rec.records != 0 {
		t.Fatalf("fresh spool has %d records", rec.records)
	}
	for i := range n {
		m := Message{Subject: "kgent.session.x.message", MsgID: string(rune('a' + i%26)), Data: make([]byte, 100)}
		if err := s.append(s.nextSeq, 0, &m); err != nil {
			t.Fatal(err)
		}
		s.nextSeq++
	}
	return s
}

func TestSpoolRecovery(t *testing.T) {
	dir := t.TempDir()
	s := writeSpool(t, dir, 1<<10, 40)
	segs := len(s.segs)
	if segs < 3 {
		t.Fatalf("only %d segments", segs)
	}
	// A second opener is refused while the first holds the lock.
	if _, _, err := openSpool(dir, 1<<10, 0, quietLog); err == nil {
		t.Fatal("spool opened twice")
	}
	// Checkpoint in the middle of the second segment.
	recLen := int64(len(encodeRecord(nil, 1, 0, &Message{Subject: "kgent.session.x.message", MsgID: "a", Data: make([]byte, 100)})))
	head := spoolPos{idx: s.segs[1].idx, off: segHeaderLen + recLen}
	if err := s.writeHead(head); err != nil {
		t.Fatal(err)
	}
	perSeg := int((s.segs[0].size - segHeaderLen) / recLen)
	s.close()

	// Torn tail on the last segment.
	last := filepath.Join(dir, segName(s.segs[len(s.segs)-1].idx))
	f, _ := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	_, _ = f.Write([]byte{0x50, 0, 0, 0, 1, 2, 3, 4, 5})
	_ = f.Close()
	before, _ := os.Stat(last)

	s2, rec, err := openSpool(dir, 1<<10, 0, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.close()
	if rec.head != head {
		t.Fatalf("head = %+v, want %+v", rec.head, head)
	}
	if want := int64(40 - perSeg - 1); rec.records != want {
		t.Fatalf("recovered %d records after the head, want %d", rec.records, want)
	}
	if rec.discarded != 9 {
		t.Fatalf("discarded %d bytes, want 9", rec.discarded)
	}
	after, _ := os.Stat(last)
	if after.Size() != before.Size()-9 {
		t.Fatalf("torn tail not truncated: %d → %d", before.Size(), after.Size())
	}
	if _, err := os.Stat(filepath.Join(dir, segName(s.segs[0].idx))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("segment before the head not removed: %v", err)
	}
	if s2.nextSeq != 41 {
		t.Fatalf("next seq %d, want 41", s2.nextSeq)
	}
}

func TestSpoolRecoveryBadCheckpointAndHeader(t *testing.T) {
	dir := t.TempDir()
	s := writeSpool(t, dir, 1<<20, 5)
	s.close()
	// A checkpoint pointing at a segment that does not exist is ignored.
	if err := os.WriteFile(filepath.Join(dir, headFile), []byte("999 100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file with a segment name but not our header is moved aside.
	if err := os.WriteFile(filepath.Join(dir, segName(500)), []byte("not a spool segment"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, rec, err := openSpool(dir, 1<<20, 0, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.close()
	if rec.records != 5 || rec.head.idx != 1 || rec.head.off != segHeaderLen {
		t.Fatalf("recovery = %+v", rec)
	}
	if _, err := os.Stat(filepath.Join(dir, segName(500)+".corrupt")); err != nil {
		t.Fatalf("foreign segment not moved aside: %v", err)
	}
	if s2.nextIdx != 501 {
		t.Fatalf("next segment index %d, want 501", s2.nextIdx)
	}
}

func TestSpoolMaxBytes(t *testing.T) {
	s, _, err := openSpool(t.TempDir(), 1<<20, 1<<10, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	var n int
	for {
		m := Message{Subject: "a.b", MsgID: "x", Data: make([]byte, 100)}
		if err = s.append(s.nextSeq, 0, &m); err != nil {
			break
		}
		n++
	}
	if !errors.Is(err, ErrSpoolFull) || n == 0 || s.total > 1<<10 {
		t.Fatalf("after %d appends: err %v, total %d", n, err, s.total)
	}
}
