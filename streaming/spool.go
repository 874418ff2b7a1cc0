package streaming

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The spool is the publisher's write-ahead log for messages that could not
// go to JetStream directly: a directory of append-only segment files
//
//	<dir>/00000000000000000001.seg   segment: "KGSPOOL1" then records
//	<dir>/HEAD                       replay checkpoint: "<segment> <offset>"
//	<dir>/LOCK                       flock: one publisher per directory
//	<dir>/rejected.seg               messages JetStream refused for good
//
// A record is
//
//	u32 body length | u32 CRC-32C(body) | body
//	body = u64 seq | i64 accepted-at (unix ns) | u16 len subject | subject |
//	       u16 len msg id | msg id | u16 header count |
//	       (u16 len key | key | u32 len value | value)* | u32 len data | data
//
// little-endian. Appends are plain writes at the end of the active segment;
// durability comes from the publisher's group commit (one fsync covers every
// record appended since the previous one). A crash can leave a torn final
// record: recovery truncates a segment at its first record that is short or
// fails its CRC.
//
// A spool has no lock of its own: its one owner, spoolLog
// (publisher_spool.go), calls it under spoolLog.mu; the group commit
// fsyncs the files it hands over outside that lock (groupCommit.syncOnce).

const (
	spoolMagic      = "KGSPOOL1"
	segHeaderLen    = int64(len(spoolMagic))
	recHeaderLen    = 8
	maxRecordBody   = 64 << 20
	minRecordBody   = 8 + 8 + 2 + 2 + 2 + 4
	segSuffix       = ".seg"
	headFile        = "HEAD"
	lockFileName    = "LOCK"
	rejectedFile    = "rejected.seg"
	readChunk       = 256 << 10
	defaultSegBytes = 16 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrSpoolFull is returned when an append would take the spool past
// PublisherOptions.SpoolMaxBytes.
var ErrSpoolFull = errors.New("nats publisher: spool is full")

// spoolPos is a position in the spool: a segment and a byte offset in it.
type spoolPos struct {
	idx uint64
	off int64
}

type segment struct {
	idx    uint64
	path   string
	size   int64 // bytes of valid data (header included)
	sealed bool  // no more appends; the active segment is the last, unsealed one
}

type spool struct {
	dir      string
	segBytes int64
	maxBytes int64
	log      *slog.Logger
	lock     *os.File

	segs         []*segment
	active       *os.File // file of the last segment while it is not sealed
	nextIdx      uint64
	total        int64 // bytes in segment files
	pendingClose []*os.File
	dirDirty     bool
	enc          []byte
	nextSeq      uint64
	rejected     *os.File
}

// spoolRecovery is what openSpool found on disk.
type spoolRecovery struct {
	head      spoolPos
	records   int64 // records at or after head
	discarded int64 // bytes truncated away (torn or corrupt tails)
}

type spoolRecord struct {
	seq uint64
	at  int64
	msg Message
}

func segName(idx uint64) string { return fmt.Sprintf("%020d%s", idx, segSuffix) }

// encodeRecord appends the framed record to dst.
func encodeRecord(dst []byte, seq uint64, at int64, m *Message) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // length + crc, filled below
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(at))
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Subject)))
	dst = append(dst, m.Subject...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.MsgID)))
	dst = append(dst, m.MsgID...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Header)))
	for k, v := range m.Header {
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(k)))
		dst = append(dst, k...)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(v)))
		dst = append(dst, v...)
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(m.Data)))
	dst = append(dst, m.Data...)
	body := dst[start+recHeaderLen:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(body, crcTable))
	return dst
}

var errBadRecord = errors.New("malformed spool record")

// decodeRecord parses a record body (already CRC-checked). The message's
// strings and data are copies: they do not alias body.
func decodeRecord(body []byte) (spoolRecord, error) {
	var r spoolRecord
	b := body
	need := func(n int) bool { return len(b) >= n }
	if !need(18) {
		return r, errBadRecord
	}
	r.seq = binary.LittleEndian.Uint64(b)
	r.at = int64(binary.LittleEndian.Uint64(b[8:]))
	b = b[16:]
	str16 := func() (string, bool) {
		if !need(2) {
			return "", false
		}
		n := int(binary.LittleEndian.Uint16(b))
		b = b[2:]
		if !need(n) {
			return "", false
		}
		s := string(b[:n])
		b = b[n:]
		return s, true
	}
	var ok bool
	if r.msg.Subject, ok = str16(); !ok {
		return r, errBadRecord
	}
	if r.msg.MsgID, ok = str16(); !ok {
		return r, errBadRecord
	}
	if !need(2) {
		return r, errBadRecord
	}
	nh := int(binary.LittleEndian.Uint16(b))
	b = b[2:]
	if nh > 0 {
		r.msg.Header = make(map[string]string, nh)
		for i := 0; i < nh; i++ {
			k, ok := str16()
			if !ok || !need(4) {
				return r, errBadRecord
			}
			n := int(binary.LittleEndian.Uint32(b))
			b = b[4:]
			if !need(n) {
				return r, errBadRecord
			}
			r.msg.Header[k] = string(b[:n])
			b = b[n:]
		}
	}
	if !need(4) {
		return r, errBadRecord
	}
	n := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if len(b) != n {
		return r, errBadRecord
	}
	r.msg.Data = append([]byte(nil), b...)
	return r, nil
}

// openSpool creates or recovers the spool in dir.
func openSpool(dir string, segBytes, maxBytes int64, log *slog.Logger) (*spool, spoolRecovery, error) {
	var rec spoolRecovery
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, rec, fmt.Errorf("spool dir %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, rec, fmt.Errorf("spool lock: %w", err)
	}
	if err := lockFile(lock); err != nil {
		_ = lock.Close()
		return nil, rec, fmt.Errorf("spool %s is in use by another publisher: %w", dir, err)
	}
	s := &spool{dir: dir, segBytes: segBytes, maxBytes: maxBytes, log: log, lock: lock, nextIdx: 1, nextSeq: 1}
	if rec, err = s.recover(); err != nil {
		s.close()
		return nil, rec, err
	}
	return s, rec, nil
}

func (s *spool) recover() (spoolRecovery, error) {
	var rec spoolRecovery
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return rec, fmt.Errorf("spool dir: %w", err)
	}
	var idxs []uint64
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, segSuffix) || name == rejectedFile {
			continue
		}
		idx, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64)
		if err != nil || idx == 0 {
			continue
		}
		idxs = append(idxs, idx)
	}
	slices.Sort(idxs)
	head, haveHead := s.readHead()
	if haveHead && !slices.Contains(idxs, head.idx) {
		haveHead = false // stale checkpoint: trust the segments
	}
	headOK := false
	for _, idx := range idxs {
		s.nextIdx = max(s.nextIdx, idx+1)
		path := filepath.Join(s.dir, segName(idx))
		if haveHead && idx < head.idx {
			// Fully replayed before the crash; its removal was not done yet.
			_ = os.Remove(path)
			continue
		}
		res, err := s.scanSegment(path, head, haveHead && idx == head.idx)
		if err != nil {
			return rec, err
		}
		rec.discarded += res.discarded
		if res.size < segHeaderLen {
			_ = os.Remove(path)
			continue
		}
		if haveHead && idx == head.idx && res.headOK {
			headOK = true
			rec.records += res.afterHead
		} else {
			rec.records += res.records
		}
		s.nextSeq = max(s.nextSeq, res.maxSeq+1)
		s.segs = append(s.segs, &segment{idx: idx, path: path, size: res.size, sealed: true})
		s.total += res.size
	}
	switch {
	case headOK:
		rec.head = head
	case len(s.segs) > 0:
		rec.head = spoolPos{idx: s.segs[0].idx, off: segHeaderLen}
	}
	if !headOK {
		_ = os.Remove(filepath.Join(s.dir, headFile))
	}
	if len(idxs) > 0 {
		s.dirDirty = true
	}
	return rec, nil
}

type scanResult struct {
	size      int64
	records   int64
	afterHead int64
	headOK    bool
	maxSeq    uint64
	discarded int64
}

// scanSegment validates a segment, truncating it after its last good record.
func (s *spool) scanSegment(path string, head spoolPos, isHeadSeg bool) (scanResult, error) {
	var res scanResult
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return res, fmt.Errorf("spool segment %s: %w", path, err)
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return res, fmt.Errorf("spool segment %s: %w", path, err)
	}
	br := bufio.NewReaderSize(f, readChunk)
	magic := make([]byte, segHeaderLen)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != spoolMagic {
		if st.Size() > 0 {
			// Not ours or destroyed: keep it aside for a human, do not replay it.
			s.log.Error("nats spool: segment has no valid header; moved aside", "file", path)
			_ = os.Rename(path, path+".corrupt")
			res.discarded = st.Size()
		}
		return res, nil
	}
	off := segHeaderLen
	var hdr [recHeaderLen]byte
	var body []byte
	for {
		if isHeadSeg && off == head.off {
			res.headOK = true
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break // clean end, or a torn header
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n < minRecordBody || n > maxRecordBody {
			break
		}
		body = slices.Grow(body[:0], int(n))[:n]
		if _, err := io.ReadFull(br, body); err != nil {
			break
		}
		if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
			break
		}
		seq := binary.LittleEndian.Uint64(body)
		res.maxSeq = max(res.maxSeq, seq)
		res.records++
		if res.headOK {
			res.afterHead++
		}
		off += recHeaderLen + int64(n)
	}
	res.size = off
	if off < st.Size() {
		res.discarded = st.Size() - off
		s.log.Warn("nats spool: discarding a torn or corrupt tail", "file", path, "valid_bytes", off, "discarded_bytes", res.discarded)
		if err := f.Truncate(off); err != nil {
			return res, fmt.Errorf("spool segment %s: truncate: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return res, fmt.Errorf("spool segment %s: sync: %w", path, err)
		}
	}
	return res, nil
}

func (s *spool) readHead() (spoolPos, bool) {
	b, err := os.ReadFile(filepath.Join(s.dir, headFile))
	if err != nil {
		return spoolPos{}, false
	}
	var p spoolPos
	if _, err := fmt.Sscanf(string(b), "%d %d\n", &p.idx, &p.off); err != nil || p.idx == 0 || p.off < segHeaderLen {
		return spoolPos{}, false
	}
	return p, true
}

// writeHead records the replay position (not fsynced: losing it only means
// replaying more, which JetStream dedupes by msg id).
func (s *spool) writeHead(p spoolPos) error {
	tmp := filepath.Join(s.dir, headFile+".tmp")
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", p.idx, p.off), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.dir, headFile))
}

func (s *spool) removeHead() { _ = os.Remove(filepath.Join(s.dir, headFile)) }

func (s *spool) last() *segment {
	if len(s.segs) == 0 {
		return nil
	}
	return s.segs[len(s.segs)-1]
}

// find returns the segment idx, or the first one after it.
func (s *spool) find(idx uint64) *segment {
	for _, sg := range s.segs {
		if sg.idx >= idx {
			return sg
		}
	}
	return nil
}

// hasRecordsAfter reports whether any record starts at or after p.
func (s *spool) hasRecordsAfter(p spoolPos) bool {
	for _, sg := range s.segs {
		switch {
		case sg.idx == p.idx && sg.size > p.off:
			return true
		case sg.idx > p.idx && sg.size > segHeaderLen:
			return true
		}
	}
	return false
}

// append writes one record at the end of the active segment.
func (s *spool) append(seq uint64, at int64, m *Message) error {
	s.enc = encodeRecord(s.enc[:0], seq, at, m)
	n := int64(len(s.enc))
	if s.maxBytes > 0 && s.total+n+segHeaderLen > s.maxBytes {
		return ErrSpoolFull
	}
	sg := s.last()
	if s.active == nil || sg == nil || sg.sealed || (sg.size+n > s.segBytes && sg.size > segHeaderLen) {
		if err := s.rotate(); err != nil {
			return err
		}
		sg = s.last()
	}
	w, err := s.active.WriteAt(s.enc, sg.size)
	if err != nil {
		if w > 0 {
			// Never leave a torn record in the middle of a segment: later
			// appends would be unreadable after it.
			if terr := s.active.Truncate(sg.size); terr != nil {
				s.seal()
			}
		}
		return fmt.Errorf("spool append: %w", err)
	}
	sg.size += n
	s.total += n
	return nil
}

// seal closes the active segment for appends (the syncer fsyncs and closes it).
func (s *spool) seal() {
	if s.active == nil {
		return
	}
	if sg := s.last(); sg != nil {
		sg.sealed = true
	}
	s.pendingClose = append(s.pendingClose, s.active)
	s.active = nil
}

func (s *spool) rotate() error {
	s.seal()
	idx := s.nextIdx
	path := filepath.Join(s.dir, segName(idx))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("spool segment: %w", err)
	}
	if _, err := f.WriteAt([]byte(spoolMagic), 0); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("spool segment: %w", err)
	}
	s.nextIdx++
	s.active = f
	s.segs = append(s.segs, &segment{idx: idx, path: path, size: segHeaderLen})
	s.total += segHeaderLen
	s.dirDirty = true
	return nil
}

// dropBefore deletes the segments entirely before p (already replayed).
func (s *spool) dropBefore(p spoolPos) {
	keep := s.segs[:0]
	for _, sg := range s.segs {
		if sg.sealed && (sg.idx < p.idx || (sg.idx == p.idx && p.off >= sg.size)) {
			if err := os.Remove(sg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("nats spool: cannot remove replayed segment", "file", sg.path, "error", err)
			}
			s.total -= sg.size
			s.dirDirty = true
			continue
		}
		keep = append(keep, sg)
	}
	clear(s.segs[len(keep):])
	s.segs = keep
}

// reset deletes every segment: the spool is empty.
func (s *spool) reset() {
	s.removeHead()
	s.seal()
	for _, sg := range s.segs {
		if err := os.Remove(sg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("nats spool: cannot remove segment", "file", sg.path, "error", err)
		}
	}
	s.segs = nil
	s.total = 0
	s.dirDirty = true
}

// reject keeps a message JetStream refused for good, for an operator to see.
func (s *spool) reject(seq uint64, at int64, m *Message) error {
	if s.rejected == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, rejectedFile), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		if st, err := f.Stat(); err == nil && st.Size() == 0 {
			if _, err := f.Write([]byte(spoolMagic)); err != nil {
				_ = f.Close()
				return err
			}
		}
		s.rejected = f
	}
	_, err := s.rejected.Write(encodeRecord(nil, seq, at, m))
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// close releases files (after a final sync by the caller).
func (s *spool) close() {
	for _, f := range s.pendingClose {
		_ = f.Close()
	}
	s.pendingClose = nil
	if s.active != nil {
		_ = s.active.Close()
		s.active = nil
	}
	if s.rejected != nil {
		_ = s.rejected.Close()
		s.rejected = nil
	}
	if s.lock != nil {
		unlockFile(s.lock)
		_ = s.lock.Close()
		s.lock = nil
	}
}

// spoolReader reads records sequentially for replay. It only reads up to the
// sizes the writer has published (under spoolLog.mu), so it never sees a
// half-written record.
type spoolReader struct {
	pos    spoolPos
	f      *os.File
	fidx   uint64
	buf    []byte
	bufOff int64 // file offset of buf[0]
}

func (r *spoolReader) seek(p spoolPos) {
	if r.f != nil && r.fidx != p.idx {
		r.closeFile()
	}
	r.pos = p
	r.buf = r.buf[:0]
}

func (r *spoolReader) closeFile() {
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
	r.buf = r.buf[:0]
}

// bytes returns n bytes at off from the file, reading through a buffer.
func (r *spoolReader) bytes(off int64, n int, end int64) ([]byte, error) {
	if off >= r.bufOff && off+int64(n) <= r.bufOff+int64(len(r.buf)) {
		s := off - r.bufOff
		return r.buf[s : s+int64(n)], nil
	}
	want := max(n, readChunk)
	want = int(min(int64(want), end-off))
	if want < n {
		return nil, io.ErrUnexpectedEOF
	}
	if cap(r.buf) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	got, err := r.f.ReadAt(r.buf, off)
	if got < n {
		r.buf = r.buf[:0]
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	r.buf = r.buf[:got]
	r.bufOff = off
	return r.buf[:n], nil
}
