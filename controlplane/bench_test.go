package controlplane_test

import (
	"context"
	"testing"

	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/tenancy"
)

// BenchmarkAuthenticate compares a KV-managed key (served from the cache)
// with a key-file/dev key (the Keyring) through the same authenticator.
func BenchmarkAuthenticate(b *testing.B) {
	kr, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true})
	if err != nil {
		b.Fatal(err)
	}
	s := controlplane.NewMemory(controlplane.Options{Keyring: kr})
	ctx := context.Background()
	ten, err := s.CreateTenant(ctx, controlplane.SystemActor("system"), "B", "b@example.com", tenancy.TierPro)
	if err != nil {
		b.Fatal(err)
	}
	// Some other keys so the map is not trivially small.
	for range 1000 {
		if _, _, err := s.CreateKey(ctx, controlplane.SystemActor("system"), ten.ID, controlplane.KeySpec{Name: "n", Scopes: tenancy.ScopeRead}); err != nil {
			b.Fatal(err)
		}
	}
	_, secret, err := s.CreateKey(ctx, controlplane.SystemActor("system"), ten.ID, controlplane.KeySpec{Name: "k", Scopes: tenancy.ScopeRead})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ name, key string }{{"managed", secret}, {"file", "kg_dev_bob"}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Authenticate(c.key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("keyring-alone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := kr.Authenticate("kg_dev_bob"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
