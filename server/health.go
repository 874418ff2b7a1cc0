package server

import (
	"encoding/json"
	"net/http"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/gen/openapi"
	"github.com/kgents/kgents-go/streaming"
)

// HealthPart is one component's contribution to /health/saas and /health.
type HealthPart struct {
	// Detail is the component's JSON object in /health/saas.
	Detail map[string]any
	// Summary is the component's one-word state in /health ("ok", "disabled", ...).
	Summary string
	// Degraded marks the service as degraded (still serving).
	Degraded bool
}

// HealthReporter reports a component's health.
type HealthReporter func() HealthPart

// natsHealth reports the connection, the publisher (breaker, spool) and
// the watchers. A disconnected or tripped NATS is degraded, not down.
func natsHealth(c *streaming.Conn, pub *streaming.Publisher, hub *streaming.Hub) HealthReporter {
	return func() HealthPart {
		st := c.Status()
		ph := pub.Health()
		d := map[string]any{
			"configured":  c.Enabled(),
			"connection":  st.Mode,
			"status":      ph.State,
			"mode":        ph.Mode,
			"breaker":     ph.Breaker,
			"spool_depth": ph.SpoolDepth,
			"spool_bytes": ph.SpoolBytes,
			"in_flight":   ph.InFlight,
			"watchers":    hub.Watchers(),
		}
		if ph.Replaying {
			d["replaying"] = true
		}
		if ph.SpoolError != "" {
			d["spool_error"] = ph.SpoolError
		}
		if st.Version != "" {
			d["server_version"] = st.Version
		}
		if u := c.ClientURL(); u != "" {
			d["embedded_url"] = u
		}
		if st.Error != "" {
			d["error"] = st.Error
		}
		switch {
		case !c.Enabled():
			d["status"], d["mode"] = "disabled", "fallback"
			return HealthPart{Detail: d, Summary: "disabled"}
		case !st.Connected:
			d["status"] = "disconnected"
			return HealthPart{Detail: d, Summary: "disconnected", Degraded: true}
		case ph.State != streaming.PublisherHealthy:
			return HealthPart{Detail: d, Summary: ph.State, Degraded: true}
		}
		return HealthPart{Detail: d, Summary: "ok"}
	}
}

// openMeterHealth reports the OpenMeter sink: an unhealthy sink degrades
// the service (usage waits in the stream; nothing is lost).
func openMeterHealth(p *billing.Processor) HealthReporter {
	return func() HealthPart {
		h := p.Health()
		if len(h.LastError) > 200 {
			h.LastError = h.LastError[:200] + "…"
		}
		d := map[string]any{
			"configured":   h.Configured,
			"status":       h.Status,
			"backlog":      h.Backlog,
			"last_success": h.LastSuccess,
			"last_error":   nil,
		}
		if h.LastError != "" {
			d["last_error"] = h.LastError
			d["last_error_at"] = h.LastErrorAt
		}
		switch h.Status {
		case "disabled":
			return HealthPart{Detail: d, Summary: "disabled"}
		case "healthy":
			return HealthPart{Detail: d, Summary: "ok"}
		}
		return HealthPart{Detail: d, Summary: h.Status, Degraded: true}
	}
}

func disabledHealth() HealthPart {
	return HealthPart{Detail: map[string]any{"configured": false, "status": "disabled"}, Summary: "disabled"}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// handleHealth is the Python-compatible summary: always 200.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	natsPart, omPart := s.health.nats(), s.health.openmeter()
	engine := s.health.engine()
	status := "ok"
	if natsPart.Degraded || omPart.Degraded {
		status = "degraded"
	}
	llm := "not_configured"
	if engine != "template" {
		llm = "ok"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":  status,
		"version": s.cfg.Version,
		"has_llm": engine != "template",
		"engine":  engine,
		"components": map[string]string{
			"soul":      "ok",
			"llm":       llm,
			"auth":      "ok",
			"metering":  "ok",
			"nats":      natsPart.Summary,
			"openmeter": omPart.Summary,
		},
	})
}

// handleHealthSaaS details the infrastructure: always 200, the body says how it is.
func (s *Server) handleHealthSaaS(w http.ResponseWriter, _ *http.Request) {
	natsPart, omPart := s.health.nats(), s.health.openmeter()
	status := "ok"
	switch {
	case !s.started.Load():
		status = "not_started"
	case natsPart.Degraded || omPart.Degraded:
		status = "degraded"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":    status,
		"started":   s.started.Load(),
		"nats":      natsPart.Detail,
		"openmeter": omPart.Detail,
	})
}

// handleLivez answers while the process can serve HTTP at all.
func (s *Server) handleLivez(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
}

// handleReadyz is 503 while starting or draining. A NATS outage does not
// make it 503: one shared dependency must not take every replica out of
// rotation, and the service degrades instead (SPEC §4.10).
func (s *Server) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	switch {
	case s.draining.Load():
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
	case !s.started.Load():
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
	default:
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openapi.Document)
}

// handleRoot is the API index the Python service served at /.
func (s *Server) handleRoot(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"name":        "kgents API",
		"version":     s.cfg.Version,
		"description": "Multi-tenant AGENTESE and K-gent Soul API",
		"docs":        "/openapi.json",
		"health":      "/health",
		"endpoints": map[string]any{
			"soul": map[string]string{
				"dialogue":        "/v1/soul/dialogue",
				"dialogue_stream": "/v1/soul/dialogue:stream",
				"governance":      "/v1/soul/governance",
			},
			"agentese": map[string]string{
				"invoke":        "/v1/agentese/invoke",
				"invoke_stream": "/v1/agentese/invoke:stream",
				"resolve":       "/v1/agentese/resolve",
				"affordances":   "/v1/agentese/affordances",
			},
			"kgent": map[string]string{
				"sessions": "/v1/kgent/sessions",
				"messages": "/v1/kgent/sessions/{id}/messages",
				"events":   "/v1/kgent/sessions/{id}/events",
			},
			"usage": map[string]string{"usage": "/v1/usage"},
		},
	})
}
