package server

import (
	"time"

	"github.com/kgents/kgents-go/controlplane"
)

// newControlPlane builds the control plane (SPEC §4.13): the JetStream
// buckets when NATS is enabled, the in-memory twins otherwise, with the key
// file and dev keys as its read-only source. It runs in the background
// while serving, and its watches resume on every NATS reconnection.
func (s *Server) newControlPlane() *controlplane.Service {
	o := controlplane.Options{
		Tiers:      s.keyring.Tiers(),
		Keyring:    s.keyring,
		Signup:     controlplane.SignupMode(s.cfg.Auth.Signup),
		SignupRate: s.cfg.Auth.SignupRate,
		Logger:     s.log,
	}
	var cp *controlplane.Service
	if s.nats.Enabled() {
		cp = controlplane.NewJetStream(s.nats.JetStream(), s.cfg.NATS.Replicas, s.nats.Connected, o)
		s.nats.OnConnect(cp.Reconnected)
	} else {
		cp = controlplane.NewMemory(o)
	}
	s.background("control-plane", cp.Run)
	s.authn = cp
	s.health.controlPlane = func() HealthPart {
		h := cp.Health()
		d := map[string]any{"status": h.Status, "tenants": h.Tenants, "keys": h.Keys}
		if !h.LastSync.IsZero() && h.LastSync.Unix() > 0 {
			d["last_sync"] = h.LastSync.UTC().Format(time.RFC3339)
		}
		return HealthPart{Detail: d, Public: d, Summary: h.Status, Degraded: h.Status == "stale"}
	}
	return cp
}
