package streaming

import (
	"context"
	"reflect"

	"github.com/nats-io/nats.go/jetstream"
)

// Creating a stream or bucket that already exists as configured changes
// nothing, so it is not sent as an update. Every component ensures its
// streams when it starts and again after an outage, and nats-server (2.15)
// applies an update, even an identical one, by rewriting the stream's
// configuration without the lock its consumer creation reads it under: an
// update racing a watcher's consumer on the same stream is a data race in the
// server (go test -race found it in an embedded server). An update is also a
// meta-layer proposal in a cluster. So the wrapper looks first and updates
// only a stream or bucket whose configuration differs from the one asked for.
//
// "Differs" compares the settings the caller set: every field of the asked-for
// configuration that is not its zero value must equal the stream's. The server
// fills in defaults for the fields left zero, so those cannot be compared; a
// setting taken back to its zero value is therefore not applied by this path
// (docs/operations.md: change it with the nats CLI).

// existingStream returns the stream named in cfg if it exists and already has
// cfg's settings.
func (g guardedJetStream) existingStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, bool) {
	s, err := g.JetStream.Stream(ctx, cfg.Name)
	if err != nil {
		return nil, false
	}
	info := s.CachedInfo()
	if info == nil || !configCovers(cfg, info.Config) {
		return nil, false
	}
	return s, true
}

// existingKeyValue returns the bucket named in cfg if it exists and already
// has cfg's settings.
func (g guardedJetStream) existingKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, bool) {
	kv, err := g.JetStream.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		return nil, false
	}
	st, err := kv.Status(ctx)
	if err != nil || !configCovers(cfg, st.Config()) {
		return nil, false
	}
	return kv, true
}

// configCovers reports whether actual has every setting of want, both the
// same jetstream configuration struct type: each field of want that is not
// its zero value equals actual's, except that a map (metadata) only needs its
// entries in actual's — the server adds its own.
func configCovers(want, actual any) bool {
	w, a := reflect.ValueOf(want), reflect.ValueOf(actual)
	if w.Kind() != reflect.Struct || w.Type() != a.Type() {
		return false
	}
	return fieldsCover(w, a)
}

func fieldsCover(w, a reflect.Value) bool {
	for i := range w.NumField() {
		wf, af := w.Field(i), a.Field(i)
		switch {
		case !w.Type().Field(i).IsExported() || wf.IsZero():
			// unset: the server's default, whatever it is
		case wf.Kind() == reflect.Struct:
			if !fieldsCover(wf, af) {
				return false
			}
		case wf.Kind() == reflect.Map:
			for _, k := range wf.MapKeys() {
				av := af.MapIndex(k)
				if !av.IsValid() || !reflect.DeepEqual(wf.MapIndex(k).Interface(), av.Interface()) {
					return false
				}
			}
		case !reflect.DeepEqual(wf.Interface(), af.Interface()):
			return false
		}
	}
	return true
}
