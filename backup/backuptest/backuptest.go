// Package backuptest reads everything kgentsd keeps in JetStream, message
// by message, so tests can prove a restore equal to what was backed up.
package backuptest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/backup"
)

// Msg is one stored message.
type Msg struct {
	Seq     uint64
	Subject string
	Header  nats.Header
	Data    []byte
	Time    time.Time
}

// Consumer is a durable consumer's position.
type Consumer struct {
	Delivered, AckFloor uint64
	AckPending          int
	Pending             uint64
	Config              string // JSON, with the name
}

// Stream is one stream's content.
type Stream struct {
	Config    string // JSON
	Msgs      uint64
	FirstSeq  uint64
	LastSeq   uint64
	Messages  []Msg
	Consumers map[string]Consumer
}

// Dump reads every stream kgentsd owns (backup.Prefixes): configuration,
// state, every message and every durable consumer.
func Dump(ctx context.Context, js jetstream.JetStream) (map[string]Stream, error) {
	out := map[string]Stream{}
	l := js.ListStreams(ctx)
	var infos []*jetstream.StreamInfo
	for info := range l.Info() {
		for _, p := range backup.Prefixes {
			if strings.HasPrefix(info.Config.Name, p) {
				infos = append(infos, info)
				break
			}
		}
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	for _, info := range infos {
		s, err := dumpStream(ctx, js, info)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", info.Config.Name, err)
		}
		out[info.Config.Name] = s
	}
	return out, nil
}

func dumpStream(ctx context.Context, js jetstream.JetStream, info *jetstream.StreamInfo) (Stream, error) {
	cfg, err := json.Marshal(info.Config)
	if err != nil {
		return Stream{}, err
	}
	s := Stream{Config: string(cfg), Msgs: info.State.Msgs, FirstSeq: info.State.FirstSeq, LastSeq: info.State.LastSeq, Consumers: map[string]Consumer{}}
	st, err := js.Stream(ctx, info.Config.Name)
	if err != nil {
		return s, err
	}
	if info.State.Msgs > 0 {
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // deleted (a KV purge, a TTL)
			}
			if err != nil {
				return s, fmt.Errorf("message %d: %w", seq, err)
			}
			s.Messages = append(s.Messages, Msg{Seq: m.Sequence, Subject: m.Subject, Header: m.Header, Data: m.Data, Time: m.Time.UTC()})
		}
	}
	cl := st.ListConsumers(ctx)
	for ci := range cl.Info() {
		if ci.Config.Durable == "" {
			continue
		}
		cc, err := json.Marshal(ci.Config)
		if err != nil {
			return s, err
		}
		s.Consumers[ci.Name] = Consumer{Delivered: ci.Delivered.Stream, AckFloor: ci.AckFloor.Stream,
			AckPending: ci.NumAckPending, Pending: ci.NumPending, Config: string(cc)}
	}
	return s, cl.Err()
}

// Diff lists every difference between two dumps (nil when equal). When
// replicas > 0, b's streams are expected to have that many replicas and
// a's replica count is not compared.
func Diff(a, b map[string]Stream, replicas int) []string {
	var out []string
	names := slices.Sorted(maps.Keys(a))
	for n := range b {
		if _, ok := a[n]; !ok {
			out = append(out, fmt.Sprintf("%s: only in the restored server", n))
		}
	}
	for _, n := range names {
		x, ok := b[n]
		if !ok {
			out = append(out, fmt.Sprintf("%s: not restored", n))
			continue
		}
		w := a[n]
		if !sameConfig(w.Config, x.Config, replicas) {
			out = append(out, fmt.Sprintf("%s: config\n  was %s\n  now %s", n, w.Config, x.Config))
		}
		if w.Msgs != x.Msgs || w.LastSeq != x.LastSeq || (w.Msgs > 0 && w.FirstSeq != x.FirstSeq) {
			out = append(out, fmt.Sprintf("%s: state was %d messages %d..%d, now %d messages %d..%d", n, w.Msgs, w.FirstSeq, w.LastSeq, x.Msgs, x.FirstSeq, x.LastSeq))
		}
		if len(w.Messages) != len(x.Messages) {
			out = append(out, fmt.Sprintf("%s: %d messages read, now %d", n, len(w.Messages), len(x.Messages)))
		}
		for i := range min(len(w.Messages), len(x.Messages)) {
			p, q := w.Messages[i], x.Messages[i]
			if p.Seq != q.Seq || p.Subject != q.Subject || !bytes.Equal(p.Data, q.Data) || !p.Time.Equal(q.Time) || !reflect.DeepEqual(norm(p.Header), norm(q.Header)) {
				out = append(out, fmt.Sprintf("%s: message %d (%s) differs from its restore %d (%s)", n, p.Seq, p.Subject, q.Seq, q.Subject))
			}
		}
		for c, wc := range w.Consumers {
			xc, ok := x.Consumers[c]
			if replicas > 0 {
				wc.Config, xc.Config = "", ""
			}
			// Equal: the configuration and the ack floor; and nothing
			// unacknowledged became acknowledged. (A single server restores
			// the exact state; a cluster restores the ack floor only, so
			// every message above it is to be delivered again, including
			// those acknowledged out of order.)
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("%s: consumer %s not restored", n, c))
			case wc.Config != xc.Config || wc.AckFloor != xc.AckFloor || uint64(wc.AckPending)+wc.Pending > uint64(xc.AckPending)+xc.Pending:
				out = append(out, fmt.Sprintf("%s: consumer %s was %+v, now %+v", n, c, wc, xc))
			}
		}
		for c := range x.Consumers {
			if _, ok := w.Consumers[c]; !ok {
				out = append(out, fmt.Sprintf("%s: consumer %s only in the restored server", n, c))
			}
		}
	}
	return out
}

func norm(h nats.Header) nats.Header {
	if len(h) == 0 {
		return nil
	}
	return h
}

// sameConfig compares two JSON configurations, a's replicas taken as
// replicas when that is > 0.
func sameConfig(a, b string, replicas int) bool {
	var p, q map[string]any
	if json.Unmarshal([]byte(a), &p) != nil || json.Unmarshal([]byte(b), &q) != nil {
		return a == b
	}
	if replicas > 0 {
		p["num_replicas"] = float64(replicas)
	}
	return reflect.DeepEqual(p, q)
}
