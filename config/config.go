// Package config reads kgentsd's configuration from environment variables.
// The variable names are part of the public contract (docs/configuration.md
// lists every one with its default). Load takes the lookup function as an
// argument so tests pass a map instead of the process environment, and it
// reports every invalid value at once, each error naming its variable.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Lookup finds an environment variable; os.LookupEnv is one.
type Lookup func(name string) (string, bool)

// MapLookup adapts a map, for tests.
func MapLookup(m map[string]string) Lookup {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// Config is everything kgentsd can be told.
type Config struct {
	// Listen host for the HTTP, gRPC and metrics servers (LISTEN_HOST). The
	// default is every interface, or loopback when the public dev keys are on.
	ListenHost string
	// HTTP port: REST, SSE, health, metrics, /openapi.json (HTTP_PORT).
	HTTPPort int
	// gRPC port (GRPC_PORT).
	GRPCPort int
	// Separate port for /metrics; 0 serves it on HTTPPort (METRICS_PORT).
	MetricsPort int
	// Serve /debug/pprof next to /metrics (KGENTS_PPROF). Keep it private.
	Pprof bool
	// Where embedded NATS keeps JetStream data and the spool lives (KGENTS_DATA_DIR).
	DataDir string
	// Version reported by /health.
	Version string
	// The container's memory limit in bytes (KGENTS_MEMORY_LIMIT; the
	// manifests fill it from limits.memory). kgentsd sets the Go runtime's
	// soft memory limit to MemoryLimitShare of it unless GOMEMLIMIT is set.
	MemoryLimit int64

	Auth      Auth
	NATS      NATS
	HTTP      HTTP
	Shutdown  Shutdown
	Log       Log
	Telemetry Telemetry
	LLM       LLM
	Sessions  Sessions
	OpenMeter OpenMeter
	Usage     Usage
	Billing   Billing
}

// Auth configures API keys and tiers.
type Auth struct {
	// Enable the three built-in development keys (KGENTS_DEV_KEYS).
	DevKeys bool
	// JSON key file, reloaded on change or SIGHUP (KGENTS_API_KEYS_FILE).
	KeysFile string
	// How often the key file is checked for changes (KGENTS_API_KEYS_RELOAD).
	KeysReload time.Duration
	// JSON file overriding tier limits (KGENTS_TIERS_FILE).
	TiersFile string
	// Sign-up mode: off, invite or open (KGENTS_SIGNUP; open by default
	// with the dev keys, off otherwise).
	Signup string
	// Sign-ups per hour per client address (SIGNUP_RATE).
	SignupRate int
}

// NATS configures the NATS connection and JetStream.
type NATS struct {
	// false runs without NATS: in-memory stores, in-process fan-out (NATS_ENABLED).
	Enabled bool
	// External servers; empty starts an embedded server (NATS_SERVERS).
	Servers []string
	// Loopback port of the embedded server (NATS_EMBEDDED_PORT). -1 picks a free port.
	EmbeddedPort int
	// Replicas for streams and buckets (NATS_REPLICAS).
	Replicas int
	// Credentials file (NATS_CREDS).
	Creds string
	// TLS files (NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY).
	TLSCA, TLSCert, TLSKey string
	// Time to wait for the first connection before starting anyway (NATS_CONNECT_TIMEOUT).
	ConnectTimeout time.Duration
}

// MemoryLimitShare is the part of the container's memory limit that the Go
// runtime's soft limit gets: the rest is headroom for memory the runtime
// does not count (the binary, kernel buffers and dirty page cache charged
// to the container) and for the collector's lag behind allocation.
const MemoryLimitShare = 0.9

// Embedded reports whether kgentsd runs its own NATS server.
func (n NATS) Embedded() bool { return n.Enabled && len(n.Servers) == 0 }

// HTTP configures the REST/SSE surface.
type HTTP struct {
	// Allowed CORS origins; ["*"] allows any origin without credentials (CORS_ORIGINS).
	CORSOrigins []string
	// Largest accepted request body (HTTP_MAX_BODY_BYTES).
	MaxBodyBytes int64
	// Interval of SSE heartbeat comments (SSE_HEARTBEAT).
	SSEHeartbeat time.Duration
}

// Shutdown configures the drain on SIGTERM.
type Shutdown struct {
	// Time between readiness going false and the servers stopping (SHUTDOWN_DRAIN).
	Drain time.Duration
	// Total budget from SIGTERM to exit, drain included (SHUTDOWN_TIMEOUT).
	Timeout time.Duration
}

// Log configures logging.
type Log struct {
	// "json" or "text" (LOG_FORMAT).
	Format string
	// debug, info, warn, error (LOG_LEVEL).
	Level string
}

// Telemetry configures OpenTelemetry.
type Telemetry struct {
	// OTLP endpoint; empty exports nothing (OTEL_EXPORTER_OTLP_ENDPOINT).
	OTLPEndpoint string
	// Service name on traces (OTEL_SERVICE_NAME).
	ServiceName string
}

// LLM configures the OpenAI-compatible soul engine. An empty Endpoint means
// the offline template engine.
type LLM struct {
	Endpoint string        // LLM_ENDPOINT or MORPHEUS_URL, base URL including /v1
	APIKey   string        // LLM_API_KEY or MORPHEUS_API_KEY
	Model    string        // LLM_MODEL or MORPHEUS_DEFAULT_MODEL
	Timeout  time.Duration // LLM_TIMEOUT or MORPHEUS_TIMEOUT
	// Pause between words of the template engine's streamed replies, to make
	// streaming visible in demos and to exercise slow turns in tests (SOUL_CHUNK_DELAY).
	TemplateChunkDelay time.Duration
}

// Sessions configures session turns and watching.
type Sessions struct {
	// Upper bound on one turn, which runs detached from its caller (TURN_TIMEOUT).
	TurnTimeout time.Duration
	// How long a turn's lease lasts unless renewed; a replica that dies
	// mid-turn blocks its session this long at most (KGENTS_TURN_LEASE).
	TurnLease time.Duration
	// Name of this replica in turn markers (KGENTS_REPLICA_NAME; default the host name).
	Replica string
	// Concurrent watch streams per tenant on this replica (KGENTS_WATCHERS_PER_TENANT).
	WatchersPerTenant int
	// How long a watcher waits for the events before a gap in a session's
	// ids to reach history before going on past it (KGENTS_WATCH_GAP_WAIT).
	WatchGapWait time.Duration
	// How long an Idempotency-Key's response is replayed (KGENTS_IDEMPOTENCY_TTL).
	IdempotencyTTL time.Duration
	// How long a long call's in-flight usage record may go unrefreshed
	// before another replica bills it as interrupted (KGENTS_INFLIGHT_DEAD_AFTER).
	InflightDeadAfter time.Duration
}

// OpenMeter configures the metering sink. Usage events always flow into the
// durable metering stream; the sink delivers them when enabled.
type OpenMeter struct {
	Enabled       bool          // OPENMETER_ENABLED
	BaseURL       string        // OPENMETER_BASE_URL
	APIKey        string        // OPENMETER_API_KEY
	BatchSize     int           // OPENMETER_BATCH_SIZE
	FlushInterval time.Duration // OPENMETER_FLUSH_INTERVAL
}

// Usage configures the usage history's rollup (SPEC §4.14, docs/billing.md).
type Usage struct {
	// How far back a copy of a usage event id is recognised and not
	// counted again (USAGE_DEDUPE_WINDOW).
	DedupeWindow time.Duration
	// The most event ids each replica keeps for that (USAGE_DEDUPE_MAX_IDS).
	DedupeMaxIDs int
}

// Billing configures the Stripe billing lifecycle (SPEC §4.11). It is off
// (the /v1/billing routes answer 501) while APIKey is empty.
type Billing struct {
	PublicURL     string // KGENTS_PUBLIC_URL: where browsers reach kgentsd (defaults of the URLs below)
	APIKey        string // STRIPE_API_KEY; never logged
	WebhookSecret string // STRIPE_WEBHOOK_SECRET (whsec_…); webhooks answer 501 without it
	APIBase       string // STRIPE_API_BASE: "" is Stripe's (https://api.stripe.com)
	// Prices by tier and interval: STRIPE_PRICE_{PRO,ENTERPRISE}_{MONTHLY,YEARLY}.
	PriceProMonthly, PriceProYearly, PriceEnterpriseMonthly, PriceEnterpriseYearly string
	Grace                                                                          time.Duration // BILLING_GRACE
	SuccessURL, CancelURL, ReturnURL                                               string        // BILLING_SUCCESS_URL, BILLING_CANCEL_URL, BILLING_RETURN_URL
	RedisURL                                                                       string        // REDIS_URL: webhook idempotency in Redis instead of JetStream KV
}

// Enabled reports whether billing is configured (STRIPE_API_KEY set).
func (b Billing) Enabled() bool { return b.APIKey != "" }

// Load reads the configuration. It returns every problem it finds, joined.
func Load(lookup Lookup) (*Config, error) {
	r := reader{lookup: lookup}
	c := &Config{
		HTTPPort:    r.port("HTTP_PORT", 8000, "0 picks a free port"),
		GRPCPort:    r.port("GRPC_PORT", 9090, "0 picks a free port"),
		MetricsPort: r.port("METRICS_PORT", 0, "0 serves /metrics on HTTP_PORT"),
		Pprof:       r.boolean("KGENTS_PPROF", false),
		DataDir:     r.str("KGENTS_DATA_DIR", "./data"),
		Version:     r.str("KGENTS_VERSION", "v1"),
		MemoryLimit: r.byteCount("KGENTS_MEMORY_LIMIT", 16<<20),
		Auth: Auth{
			DevKeys:    r.boolean("KGENTS_DEV_KEYS", false),
			KeysFile:   r.str("KGENTS_API_KEYS_FILE", ""),
			KeysReload: r.duration("KGENTS_API_KEYS_RELOAD", 5*time.Second, time.Second),
			TiersFile:  r.str("KGENTS_TIERS_FILE", ""),
		},
		NATS: NATS{
			Enabled:        r.boolean("NATS_ENABLED", true),
			Servers:        r.list("NATS_SERVERS"),
			EmbeddedPort:   r.embeddedPort("NATS_EMBEDDED_PORT", 4223),
			Replicas:       r.intRange("NATS_REPLICAS", 1, 1, 5),
			Creds:          r.str("NATS_CREDS", ""),
			TLSCA:          r.str("NATS_TLS_CA", ""),
			TLSCert:        r.str("NATS_TLS_CERT", ""),
			TLSKey:         r.str("NATS_TLS_KEY", ""),
			ConnectTimeout: r.duration("NATS_CONNECT_TIMEOUT", 10*time.Second, 0),
		},
		HTTP: HTTP{
			CORSOrigins:  r.origins("CORS_ORIGINS", []string{"http://localhost:3000"}),
			MaxBodyBytes: int64(r.intRange("HTTP_MAX_BODY_BYTES", 1<<20, 1024, 64<<20)),
			SSEHeartbeat: r.duration("SSE_HEARTBEAT", 15*time.Second, 100*time.Millisecond),
		},
		Shutdown: Shutdown{
			Drain:   r.duration("SHUTDOWN_DRAIN", 5*time.Second, 0),
			Timeout: r.duration("SHUTDOWN_TIMEOUT", 20*time.Second, time.Second),
		},
		Log: Log{
			Format: r.oneOf("LOG_FORMAT", "text", "text", "json"),
			Level:  r.oneOf("LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		},
		Telemetry: Telemetry{
			OTLPEndpoint: r.str("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
			ServiceName:  r.str("OTEL_SERVICE_NAME", "kgentsd"),
		},
		LLM: LLM{
			Endpoint: r.url("LLM_ENDPOINT", "", "MORPHEUS_URL"),
			APIKey:   r.str2("LLM_API_KEY", "MORPHEUS_API_KEY", ""),
			Model:    r.str2("LLM_MODEL", "MORPHEUS_DEFAULT_MODEL", ""),
			Timeout:  r.duration2("LLM_TIMEOUT", "MORPHEUS_TIMEOUT", 120*time.Second),

			TemplateChunkDelay: r.duration("SOUL_CHUNK_DELAY", 0, 0),
		},
	}
	// The dev keys are published in the README: with them on, a default
	// start must not be reachable from the network.
	defHost := "0.0.0.0"
	if c.Auth.DevKeys {
		defHost = "127.0.0.1"
	}
	c.ListenHost = r.str("LISTEN_HOST", defHost)
	defSignup := "off"
	if c.Auth.DevKeys {
		defSignup = "open"
	}
	c.Auth.Signup = r.oneOf("KGENTS_SIGNUP", defSignup, "off", "invite", "open")
	c.Auth.SignupRate = r.intRange("SIGNUP_RATE", 5, 1, 1_000_000)
	c.Sessions.TurnTimeout = r.duration("TURN_TIMEOUT", c.LLM.Timeout+30*time.Second, time.Second)
	c.Sessions.TurnLease = r.duration("KGENTS_TURN_LEASE", 10*time.Second, 100*time.Millisecond)
	c.Sessions.Replica = r.str("KGENTS_REPLICA_NAME", hostname())
	c.Sessions.WatchersPerTenant = r.intRange("KGENTS_WATCHERS_PER_TENANT", 100, 1, 1_000_000)
	c.Sessions.WatchGapWait = r.duration("KGENTS_WATCH_GAP_WAIT", 60*time.Second, time.Millisecond)
	c.Sessions.IdempotencyTTL = r.duration("KGENTS_IDEMPOTENCY_TTL", 24*time.Hour, time.Second)
	c.Sessions.InflightDeadAfter = r.duration("KGENTS_INFLIGHT_DEAD_AFTER", 45*time.Second, time.Second)
	c.OpenMeter = OpenMeter{
		Enabled:       r.boolean("OPENMETER_ENABLED", false),
		BaseURL:       r.url("OPENMETER_BASE_URL", "https://openmeter.cloud"),
		APIKey:        r.str("OPENMETER_API_KEY", ""),
		BatchSize:     r.intRange("OPENMETER_BATCH_SIZE", 100, 1, 10_000),
		FlushInterval: r.duration("OPENMETER_FLUSH_INTERVAL", time.Second, 10*time.Millisecond),
	}
	if c.OpenMeter.Enabled && c.OpenMeter.APIKey == "" {
		r.fail("OPENMETER_API_KEY", "is required when OPENMETER_ENABLED is true")
	}
	if c.OpenMeter.Enabled && !c.NATS.Enabled {
		r.fail("OPENMETER_ENABLED", "needs NATS (usage events travel through the kgent-metering stream); NATS_ENABLED is false")
	}

	c.Usage = Usage{
		DedupeWindow: r.duration("USAGE_DEDUPE_WINDOW", 48*time.Hour, time.Minute),
		DedupeMaxIDs: r.intRange("USAGE_DEDUPE_MAX_IDS", 4_000_000, 1000, 1_000_000_000),
	}
	if c.Usage.DedupeWindow > 30*24*time.Hour {
		r.fail("USAGE_DEDUPE_WINDOW", "is above the metering stream's 30-day retention, the most it can look back")
	}

	c.Billing = Billing{
		PublicURL:              r.url("KGENTS_PUBLIC_URL", fmt.Sprintf("http://localhost:%d", c.HTTPPort)),
		APIKey:                 r.str("STRIPE_API_KEY", ""),
		WebhookSecret:          r.str("STRIPE_WEBHOOK_SECRET", ""),
		APIBase:                r.url("STRIPE_API_BASE", ""),
		PriceProMonthly:        r.str("STRIPE_PRICE_PRO_MONTHLY", ""),
		PriceProYearly:         r.str("STRIPE_PRICE_PRO_YEARLY", ""),
		PriceEnterpriseMonthly: r.str("STRIPE_PRICE_ENTERPRISE_MONTHLY", ""),
		PriceEnterpriseYearly:  r.str("STRIPE_PRICE_ENTERPRISE_YEARLY", ""),
		Grace:                  r.duration("BILLING_GRACE", 72*time.Hour, time.Second),
		RedisURL:               r.redisURL("REDIS_URL"),
	}
	console := c.Billing.PublicURL + "/console/billing"
	c.Billing.SuccessURL = r.url("BILLING_SUCCESS_URL", console+"?checkout=success")
	c.Billing.CancelURL = r.url("BILLING_CANCEL_URL", console+"?checkout=cancel")
	c.Billing.ReturnURL = r.url("BILLING_RETURN_URL", console)
	if c.Billing.APIKey != "" {
		if !strings.HasPrefix(c.Billing.APIKey, "sk_") && !strings.HasPrefix(c.Billing.APIKey, "rk_") {
			r.fail("STRIPE_API_KEY", "is not a Stripe secret or restricted key (sk_… or rk_…)")
		}
		if c.Billing.PriceProMonthly == "" && c.Billing.PriceProYearly == "" && c.Billing.PriceEnterpriseMonthly == "" && c.Billing.PriceEnterpriseYearly == "" {
			r.fail("STRIPE_PRICE_PRO_MONTHLY", "(or another STRIPE_PRICE_*) is required when STRIPE_API_KEY is set")
		}
	}
	if c.Billing.WebhookSecret != "" && !strings.HasPrefix(c.Billing.WebhookSecret, "whsec_") {
		r.fail("STRIPE_WEBHOOK_SECRET", "is not a webhook signing secret (whsec_…)")
	}
	seen := map[string]string{}
	for _, p := range [][2]string{{"STRIPE_PRICE_PRO_MONTHLY", c.Billing.PriceProMonthly}, {"STRIPE_PRICE_PRO_YEARLY", c.Billing.PriceProYearly},
		{"STRIPE_PRICE_ENTERPRISE_MONTHLY", c.Billing.PriceEnterpriseMonthly}, {"STRIPE_PRICE_ENTERPRISE_YEARLY", c.Billing.PriceEnterpriseYearly}} {
		if p[1] == "" {
			continue
		}
		if other, dup := seen[p[1]]; dup {
			r.fail(p[0], fmt.Sprintf("is the same price as %s (a price must name one tier and interval)", other))
		}
		seen[p[1]] = p[0]
	}

	// Rules that tie variables together.
	if c.LLM.Endpoint != "" && c.LLM.Model == "" {
		r.fail("LLM_MODEL", "is required when LLM_ENDPOINT (or MORPHEUS_URL) is set")
	}
	if c.Shutdown.Drain >= c.Shutdown.Timeout {
		r.fail("SHUTDOWN_DRAIN", fmt.Sprintf("(%s) must be shorter than SHUTDOWN_TIMEOUT (%s)", c.Shutdown.Drain, c.Shutdown.Timeout))
	}
	if c.HTTPPort == c.GRPCPort && c.HTTPPort != 0 {
		r.fail("GRPC_PORT", fmt.Sprintf("must differ from HTTP_PORT (both %d)", c.HTTPPort))
	}
	if c.MetricsPort != 0 && (c.MetricsPort == c.HTTPPort || c.MetricsPort == c.GRPCPort) {
		r.fail("METRICS_PORT", fmt.Sprintf("must differ from HTTP_PORT and GRPC_PORT (%d)", c.MetricsPort))
	}
	if (c.NATS.TLSCert == "") != (c.NATS.TLSKey == "") {
		r.fail("NATS_TLS_CERT", "and NATS_TLS_KEY must be set together")
	}
	if !c.NATS.Enabled && len(c.NATS.Servers) > 0 {
		r.fail("NATS_SERVERS", "is set but NATS_ENABLED is false")
	}
	if c.DataDir == "" {
		r.fail("KGENTS_DATA_DIR", "must not be empty")
	} else if abs, err := filepath.Abs(c.DataDir); err == nil {
		c.DataDir = abs
	}
	if err := errors.Join(r.errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// reader reads typed values and collects what is wrong with them.
type reader struct {
	lookup Lookup
	errs   []error
}

func (r *reader) fail(name, msg string) {
	r.errs = append(r.errs, fmt.Errorf("%s %s", name, msg))
}

func (r *reader) raw(name string) (string, bool) {
	v, ok := r.lookup(name)
	if !ok {
		return "", false
	}
	v = strings.TrimSpace(v)
	return v, v != ""
}

func (r *reader) str(name, def string) string {
	if v, ok := r.raw(name); ok {
		return v
	}
	return def
}

// str2 reads name, then its legacy alias.
func (r *reader) str2(name, alias, def string) string {
	if v, ok := r.raw(name); ok {
		return v
	}
	return r.str(alias, def)
}

// url reads an http(s) URL from name, or else from its legacy aliases
// (def when none is set), without a trailing slash.
func (r *reader) url(name, def string, aliases ...string) string {
	used := name
	v, ok := r.raw(name)
	for _, alias := range aliases {
		if ok {
			break
		}
		used = alias
		v, ok = r.raw(alias)
	}
	if !ok {
		return def
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		r.fail(used, fmt.Sprintf("%q is not an http(s) URL", v))
		return def
	}
	return strings.TrimRight(v, "/")
}

// redisURL reads a redis:// or rediss:// URL.
func (r *reader) redisURL(name string) string {
	v, ok := r.raw(name)
	if !ok {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		r.fail(name, "is not a redis:// or rediss:// URL")
		return ""
	}
	return v
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "kgentsd"
	}
	return h
}

func (r *reader) list(name string) []string {
	v, ok := r.raw(name)
	if !ok {
		return nil
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (r *reader) origins(name string, def []string) []string {
	v := r.list(name)
	if v == nil {
		return def
	}
	for _, o := range v {
		if o == "*" {
			if len(v) > 1 {
				r.fail(name, `mixes "*" with explicit origins`)
			}
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			r.fail(name, fmt.Sprintf("%q is not an origin such as https://app.example.com", o))
		}
	}
	for i, o := range v {
		v[i] = strings.TrimRight(o, "/")
	}
	return v
}

// ParseBool reads the boolean spellings the Python service accepted.
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true/false, 1/0, yes/no, on/off)", s)
}

func (r *reader) boolean(name string, def bool) bool {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	b, err := ParseBool(v)
	if err != nil {
		r.fail(name, err.Error())
		return def
	}
	return b
}

func (r *reader) intRange(name string, def, lo, hi int) int {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		r.fail(name, fmt.Sprintf("%q is not an integer from %d to %d", v, lo, hi))
		return def
	}
	return n
}

// byteCount reads a whole number of bytes, as the downward API writes a
// resource limit (resourceFieldRef with the default divisor), at least min;
// unset is 0.
func (r *reader) byteCount(name string, min int64) int64 {
	v, ok := r.raw(name)
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min {
		r.fail(name, fmt.Sprintf("%q is not a number of bytes of at least %d", v, min))
		return 0
	}
	return n
}

// port reads a TCP port; zero says what 0 means, for the error message.
func (r *reader) port(name string, def int, zero string) int {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 65535 {
		r.fail(name, fmt.Sprintf("%q is not a port (0-65535; %s)", v, zero))
		return def
	}
	return n
}

func (r *reader) embeddedPort(name string, def int) int {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < -1 || n == 0 || n > 65535 {
		r.fail(name, fmt.Sprintf("%q is not a port (1-65535, or -1 for a free port)", v))
		return def
	}
	return n
}

func (r *reader) oneOf(name, def string, allowed ...string) string {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	lv := strings.ToLower(v)
	for _, a := range allowed {
		if lv == a {
			return a
		}
	}
	r.fail(name, fmt.Sprintf("%q is not one of %s", v, strings.Join(allowed, ", ")))
	return def
}

// ParseDuration reads Go syntax ("2s", "1m30s") or plain seconds ("2.5"), as
// the Python manifests wrote durations.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || f > 1e9 {
			return 0, fmt.Errorf("%q is out of range", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (Go syntax such as 2s, or seconds such as 2.5)", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return d, nil
}

func (r *reader) duration(name string, def, min time.Duration) time.Duration {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	d, err := ParseDuration(v)
	if err != nil {
		r.fail(name, err.Error())
		return def
	}
	if d < min {
		r.fail(name, fmt.Sprintf("%q is below the minimum of %s", v, min))
		return def
	}
	return d
}

func (r *reader) duration2(name, alias string, def time.Duration) time.Duration {
	if _, ok := r.raw(name); ok {
		return r.duration(name, def, time.Second)
	}
	return r.duration(alias, def, time.Second)
}
