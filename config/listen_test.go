package config_test

import (
	"testing"

	"github.com/kgents/kgents-go/config"
)

// TestListenHostLoopbackWithDevKeys: the public dev keys must not be served
// on every interface by default; without them the default stays 0.0.0.0
// (the manifests rely on it), and LISTEN_HOST always wins.
func TestListenHostLoopbackWithDevKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"KGENTS_DEV_KEYS": "true"}, "127.0.0.1"},
		{map[string]string{"KGENTS_DEV_KEYS": "false"}, "0.0.0.0"},
		{map[string]string{}, "0.0.0.0"},
		{map[string]string{"KGENTS_DEV_KEYS": "true", "LISTEN_HOST": "0.0.0.0"}, "0.0.0.0"},
		{map[string]string{"KGENTS_DEV_KEYS": "false", "LISTEN_HOST": "127.0.0.1"}, "127.0.0.1"},
	} {
		c, err := config.Load(config.MapLookup(tc.env))
		if err != nil {
			t.Fatal(err)
		}
		if c.ListenHost != tc.want {
			t.Errorf("%v: ListenHost = %q, want %q", tc.env, c.ListenHost, tc.want)
		}
	}
}
