package billing

import (
	"bytes"
	"errors"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// usageReader reads the usage events of metering messages for the rollup:
// only the fields it counts by, in one pass over the bytes, skipping the
// rest unparsed. (encoding/json, a batch split and then each event decoded
// into a struct, was 15% of a loaded replica's CPU.) It is not safe for
// concurrent use: the rollup's one goroutine owns it.
type usageReader struct {
	rd  bytes.Reader
	dec *jsontext.Decoder
	// tenants interns subjects: a few tenants send most events, and a
	// string per event was a quarter of the rollup's allocations.
	tenants map[string]string
}

// maxInternedTenants and maxInternedLen bound usageReader.tenants (cleared
// when full; tenant ids are 36 characters).
const (
	maxInternedTenants = 4096
	maxInternedLen     = 64
)

var errNotUsage = errors.New("not a usage event")

// readerOptions: the reader does not track every object's member names to
// refuse duplicates (a tenth of its time). A duplicated member reads as its
// last value; the events come from this package's own encoder, which never
// writes one.
var readerOptions = jsontext.AllowDuplicateNames(true)

// read appends the events of a message (one, or a call's batch) to out,
// leaving out those that cannot be attributed (no id or subject, or not a
// well-formed event); stored is the time an event without one gets.
func (u *usageReader) read(subject string, data []byte, stored time.Time, out []usageEvent) []usageEvent {
	u.rd.Reset(data)
	if u.dec == nil {
		u.dec = jsontext.NewDecoder(&u.rd, readerOptions)
	} else {
		u.dec.Reset(&u.rd, readerOptions)
	}
	if !IsBatch(subject) {
		if ev, err := u.event(stored); err == nil {
			out = append(out, ev)
		}
		return out
	}
	if tok, err := u.dec.ReadToken(); err != nil || tok.Kind() != '[' {
		return out // the sink dead-letters it whole
	}
	for u.dec.PeekKind() != ']' {
		ev, err := u.event(stored)
		switch {
		case err == nil:
			out = append(out, ev)
		case errors.Is(err, errNotUsage):
			// a well-formed value that is not one: the next may be
		default:
			return out // the rest cannot be read
		}
	}
	return out
}

// event reads one CloudEvent object.
func (u *usageReader) event(stored time.Time) (usageEvent, error) {
	var ev usageEvent
	if u.dec.PeekKind() != '{' {
		if err := u.dec.SkipValue(); err != nil {
			return ev, err
		}
		return ev, errNotUsage
	}
	if _, err := u.dec.ReadToken(); err != nil {
		return ev, err
	}
	bad := false
	for u.dec.PeekKind() != '}' {
		name, err := u.dec.ReadToken()
		if err != nil {
			return ev, err
		}
		switch name.String() {
		case "id":
			ev.ID, bad = u.str(bad)
		case "type":
			var b []byte
			b, bad = u.strBytes(bad)
			ev.Type = internType(b)
		case "subject":
			var b []byte
			b, bad = u.strBytes(bad)
			ev.Subject = u.tenant(b)
		case "time":
			var s string
			if s, bad = u.str(bad); s != "" {
				t, err := time.Parse(time.RFC3339Nano, s)
				if err != nil {
					bad = true
				}
				ev.Time = t
			}
		case "data":
			bad = u.data(&ev, bad)
		default:
			if err := u.dec.SkipValue(); err != nil {
				return ev, err
			}
		}
		if u.dec.PeekKind() == 0 {
			return ev, errors.New("truncated event")
		}
	}
	if _, err := u.dec.ReadToken(); err != nil {
		return ev, err
	}
	if bad || ev.ID == "" || ev.Subject == "" {
		return ev, errNotUsage
	}
	if ev.Time.IsZero() {
		ev.Time = stored
	}
	return ev, nil
}

// str reads a string value ("" and bad for anything else).
func (u *usageReader) str(bad bool) (string, bool) {
	b, bad := u.strBytes(bad)
	return string(b), bad
}

// strBytes reads a string value's contents, unescaped (nil and bad for
// anything else); they are valid until the next read.
func (u *usageReader) strBytes(bad bool) ([]byte, bool) {
	if k := u.dec.PeekKind(); k != '"' {
		err := u.dec.SkipValue()
		return nil, bad || err != nil || k != 'n' // null is no value
	}
	v, err := u.dec.ReadValue()
	if err != nil {
		return nil, true
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], bad
	}
	b, err := jsontext.AppendUnquote(nil, v)
	if err != nil {
		return nil, true
	}
	return b, bad
}

// internType returns the event types this package defines without
// allocating.
func internType(b []byte) string {
	switch string(b) {
	case TypeAPIRequest:
		return TypeAPIRequest
	case TypeLLMTokens:
		return TypeLLMTokens
	case TypeAgenteseInvoke:
		return TypeAgenteseInvoke
	case TypeSessionCreate:
		return TypeSessionCreate
	case TypeSessionMessage:
		return TypeSessionMessage
	}
	return string(b)
}

// tenant interns a subject.
func (u *usageReader) tenant(b []byte) string {
	if len(b) > maxInternedLen {
		return string(b) // not a tenant id: not kept
	}
	if s, ok := u.tenants[string(b)]; ok {
		return s
	}
	if u.tenants == nil || len(u.tenants) >= maxInternedTenants {
		u.tenants = make(map[string]string, 64)
	}
	s := string(b)
	u.tenants[s] = s
	return s
}

// data reads the event's data object: status_code and tokens_total.
func (u *usageReader) data(ev *usageEvent, bad bool) bool {
	if k := u.dec.PeekKind(); k != '{' {
		// null is no data; anything else is not an event's data
		return u.dec.SkipValue() != nil || bad || k != 'n'
	}
	if _, err := u.dec.ReadToken(); err != nil {
		return true
	}
	for u.dec.PeekKind() != '}' {
		name, err := u.dec.ReadToken()
		if err != nil {
			return true
		}
		var dst *float64
		switch name.String() {
		case "status_code":
			dst = &ev.Data.StatusCode
		case "tokens_total":
			dst = &ev.Data.TokensTotal
		}
		if dst == nil || u.dec.PeekKind() != '0' {
			if err := u.dec.SkipValue(); err != nil {
				return true
			}
			if dst != nil {
				bad = true // a counted field that is not a number
			}
			continue
		}
		tok, err := u.dec.ReadToken()
		if err != nil {
			return true
		}
		f, err := tok.Float()
		if err != nil {
			bad = true
		}
		*dst = f
		if u.dec.PeekKind() == 0 {
			return true
		}
	}
	_, err := u.dec.ReadToken()
	return err != nil || bad
}
