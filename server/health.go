package server

import (
	"encoding/json"
	"net/http"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/streaming"
)

// HealthPart is one component's contribution to /health/saas and /health.
type HealthPart struct {
	// Detail is the component's JSON object in the operators' /health/saas
	// (on METRICS_PORT): everything, error texts and addresses included.
	Detail map[string]any
	// Public is the component's object in the public /health/saas (on
	// HTTP_PORT): statuses and non-sensitive counts only — never a URL, a
	// host:port, a server version or an error text, which can name internal
	// hosts. Nil means the status and configured fields of Detail.
	Public map[string]any
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
		part := HealthPart{Detail: d, Summary: "ok"}
		switch {
		case !c.Enabled():
			d["status"], d["mode"] = "disabled", "fallback"
			part.Summary = "disabled"
		case st.Incompatible:
			// Connected to a server kgentsd refuses to use (too old): it
			// stays in fallback mode; the error says why.
			d["status"], d["mode"] = "incompatible", "fallback"
			part.Summary, part.Degraded = "incompatible", true
		case !st.Connected:
			d["status"] = "disconnected"
			part.Summary, part.Degraded = "disconnected", true
		case ph.State != streaming.PublisherHealthy:
			part.Summary, part.Degraded = ph.State, true
		}
		part.Public = pick(d, "configured", "connection", "status", "mode", "spool_depth", "spool_bytes", "in_flight", "watchers", "replaying")
		part.Public["breaker"] = map[string]any{"state": ph.Breaker.State}
		if ph.SpoolError != "" {
			part.Public["spool_error"] = true // the text (a path) is in the operators' view
		}
		return part
	}
}

// pick copies the named keys of m that are set.
func pick(m map[string]any, keys ...string) map[string]any {
	out := make(map[string]any, len(keys))
	for _, k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

// public is p's object for the public /health/saas.
func (p HealthPart) public() map[string]any {
	if p.Public != nil {
		return p.Public
	}
	return pick(p.Detail, "configured", "status")
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
		// The error text names OpenMeter's (possibly internal) URL: the
		// public view says only when the last failure was.
		pub := pick(d, "configured", "status", "backlog", "last_success", "last_error_at")
		switch h.Status {
		case "disabled":
			return HealthPart{Detail: d, Public: pub, Summary: "disabled"}
		case "healthy":
			return HealthPart{Detail: d, Public: pub, Summary: "ok"}
		}
		return HealthPart{Detail: d, Public: pub, Summary: h.Status, Degraded: true}
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

// handleHealthSaaS is the public view of the infrastructure (HTTP_PORT):
// always 200, statuses and counts only (HealthPart.Public).
func (s *Server) handleHealthSaaS(w http.ResponseWriter, _ *http.Request) {
	s.writeHealthSaaS(w, false)
}

// handleHealthSaaSDetail is the operators' view, served next to /metrics
// on METRICS_PORT only (a port kept private): the same document with every
// detail — embedded NATS URL, server version, breaker and OpenMeter errors.
func (s *Server) handleHealthSaaSDetail(w http.ResponseWriter, _ *http.Request) {
	s.writeHealthSaaS(w, true)
}

func (s *Server) writeHealthSaaS(w http.ResponseWriter, detail bool) {
	natsPart, omPart := s.health.nats(), s.health.openmeter()
	natsView, omView := natsPart.public(), omPart.public()
	if detail {
		natsView, omView = natsPart.Detail, omPart.Detail
	}
	status := "ok"
	switch {
	case !s.started.Load():
		status = "not_started"
	case natsPart.Degraded || omPart.Degraded:
		status = "degraded"
	}
	doc := map[string]any{
		"status":    status,
		"started":   s.started.Load(),
		"nats":      natsView,
		"openmeter": omView,
	}
	if s.health.controlPlane != nil {
		cp := s.health.controlPlane()
		doc["control_plane"] = cp.public()
		if detail {
			doc["control_plane"] = cp.Detail
		}
	}
	if s.health.stripe != nil {
		st := s.health.stripe()
		doc["stripe"] = st.public()
		if detail {
			doc["stripe"] = st.Detail
		}
	}
	writeJSON(w, http.StatusOK, doc)
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
