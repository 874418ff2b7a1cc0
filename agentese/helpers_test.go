package agentese_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/agentese"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/tenancy"
)

// Dev keys (tenancy dev entries): alice is FREE, read only, [developer];
// bob is PRO, read+write, [developer, architect]; carol is ENTERPRISE,
// read+write+admin, every archetype.
const (
	alice = "kg_dev_alice"
	bob   = "kg_dev_bob"
	carol = "kg_dev_carol"
)

var devKeyring = sync.OnceValues(func() (*tenancy.Keyring, error) {
	return tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true})
})

func identityOf(t testing.TB, key string) *tenancy.Identity {
	t.Helper()
	kr, err := devKeyring()
	if err != nil {
		t.Fatal(err)
	}
	id, err := kr.Authenticate(key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// ctxAs is a context carrying the dev key's identity, as the auth
// interceptor would leave it.
func ctxAs(t testing.TB, key string) context.Context {
	return tenancy.WithIdentity(context.Background(), identityOf(t, key))
}

// ctxWith is a context for a made-up identity.
func ctxWith(id *tenancy.Identity) context.Context {
	return tenancy.WithIdentity(context.Background(), id)
}

// newSoul is the real Soul service over the offline template engine.
func newSoul() *soulsvc.Service {
	return soulsvc.New(soul.NewTemplateEngine(), soul.NewGovernor(nil))
}

// newRegistry is the default registry over the real Soul service.
func newRegistry(opts ...agentese.Option) *agentese.Registry {
	return agentese.DefaultRegistry(newSoul(), opts...)
}

// kwargs parses a JSON object into a Struct.
func kwargs(t testing.TB, js string) *structpb.Struct {
	t.Helper()
	if js == "" {
		return nil
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal([]byte(js), s); err != nil {
		t.Fatalf("kwargs %s: %v", js, err)
	}
	return s
}

// field reads a top-level field of an object result.
func field(v *structpb.Value, name string) *structpb.Value {
	return v.GetStructValue().GetFields()[name]
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 22, 9, 30, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// sinkRecorder is a Sink that records what it receives.
type sinkRecorder struct {
	opens  int
	chunks []string
	// openErr, if set, is returned by Open.
	openErr error
}

func (s *sinkRecorder) Open() error {
	s.opens++
	return s.openErr
}

func (s *sinkRecorder) Chunk(text string, index int) error {
	if index != len(s.chunks) {
		return &agentese.Error{Kind: agentese.KindStream, Msg: "chunk out of order"}
	}
	s.chunks = append(s.chunks, text)
	return nil
}
