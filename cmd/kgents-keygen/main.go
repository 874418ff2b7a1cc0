// Command kgents-keygen makes API keys, in one of two ways.
//
// Key-file mode (no -server) makes a key and prints it once, with the entry
// to add to KGENTS_API_KEYS_FILE (which stores only its SHA-256): for the
// first operator key of a deployment, and for keys that must not depend on
// NATS. They are read-only to the API.
//
//	go run ./cmd/kgents-keygen -tenant 6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11 -user u-42 -scopes read,write
//
// Operator mode (-server) asks a running kgentsd's operator API for a
// tenant (unless -tenant names one) and a key, which take effect on every
// replica within 2 s and can be rotated and revoked through the API. The
// operator key comes from -operator-key or KGENTS_OPERATOR_KEY.
//
//	KGENTS_OPERATOR_KEY=kg_... go run ./cmd/kgents-keygen -server https://api.example.com \
//	    -tenant-name "Acme" -email billing@acme.example -tier pro -scopes read,write,admin
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/kgents/kgents-go/tenancy"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kgents-keygen:", err)
		os.Exit(2)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("kgents-keygen", flag.ContinueOnError)
	tenant := fs.String("tenant", "", "tenant id (a UUID; required)")
	user := fs.String("user", "", "user id (required)")
	scopes := fs.String("scopes", "read", "comma-separated scopes: read, write, admin, operator")
	server := fs.String("server", "", "operator mode: kgentsd's REST base URL (https://api.example.com)")
	opKey := fs.String("operator-key", "", "operator mode: an operator key (default $KGENTS_OPERATOR_KEY)")
	tenantName := fs.String("tenant-name", "", "operator mode: create a tenant with this name (unless -tenant)")
	email := fs.String("email", "", "operator mode: the new tenant's billing email")
	tier := fs.String("tier", "free", "operator mode: the new tenant's tier: free, pro, enterprise")
	keyName := fs.String("key-name", "default", "operator mode: the key's name")
	archetypes := fs.String("archetypes", "", "operator mode: comma-separated AGENTESE archetypes (default developer)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *server != "" {
		o := operatorRequest{
			server: strings.TrimRight(*server, "/"), key: *opKey, tenant: *tenant,
			tenantName: *tenantName, email: *email, tier: *tier, keyName: *keyName,
			scopes: splitList(*scopes), archetypes: splitList(*archetypes),
		}
		if o.key == "" {
			o.key = os.Getenv("KGENTS_OPERATOR_KEY")
		}
		return o.run(out)
	}
	if _, err := uuid.Parse(*tenant); err != nil {
		return fmt.Errorf("-tenant must be a UUID")
	}
	if *user == "" {
		return fmt.Errorf("-user is required")
	}
	var list []string
	for _, s := range strings.Split(*scopes, ",") {
		s = strings.TrimSpace(s)
		if _, err := tenancy.ParseScope(s); err != nil {
			return err
		}
		list = append(list, s)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	key := tenancy.KeyPrefix + base64.RawURLEncoding.EncodeToString(secret)
	entry, err := tenancy.KeyFileEntry(key, *tenant, *user, list)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "API key (shown once, give it to the user):\n  %s\n\nAdd to the \"keys\" array of KGENTS_API_KEYS_FILE:\n%s\n", key, entry)
	return err
}

func splitList(s string) []string {
	out := []string{}
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// operatorRequest is operator mode: a tenant and a key through the API.
type operatorRequest struct {
	server, key                     string
	tenant, tenantName, email, tier string
	keyName                         string
	scopes, archetypes              []string
	client                          *http.Client
}

func (o operatorRequest) run(out io.Writer) error {
	if o.key == "" {
		return errors.New("operator mode needs -operator-key or KGENTS_OPERATOR_KEY")
	}
	if o.tenant == "" && (o.tenantName == "" || o.email == "") {
		return errors.New("operator mode needs -tenant (an existing tenant) or -tenant-name and -email (a new one)")
	}
	if o.tenant != "" {
		if _, err := uuid.Parse(o.tenant); err != nil {
			return errors.New("-tenant must be a UUID")
		}
	}
	for _, s := range o.scopes {
		if _, err := tenancy.ParseScope(s); err != nil {
			return err
		}
	}
	if o.client == nil {
		o.client = &http.Client{Timeout: 30 * time.Second}
	}
	ctx := context.Background()
	if o.tenant == "" {
		var t struct {
			ID string `json:"id"`
		}
		body := map[string]any{"name": o.tenantName, "email": o.email, "tier": o.tier}
		if err := o.call(ctx, "POST", "/v1/admin/tenants", body, &t); err != nil {
			return fmt.Errorf("creating the tenant: %w", err)
		}
		o.tenant = t.ID
		if _, err := fmt.Fprintf(out, "Tenant created: %s (%s, %s)\n", t.ID, o.tenantName, o.tier); err != nil {
			return err
		}
	}
	body := map[string]any{"name": o.keyName, "scopes": o.scopes}
	if len(o.archetypes) > 0 {
		body["archetypes"] = o.archetypes
	}
	var k struct {
		Key struct {
			ID string `json:"id"`
		} `json:"key"`
		Secret string `json:"secret"`
	}
	if err := o.call(ctx, "POST", "/v1/admin/tenants/"+o.tenant+"/keys", body, &k); err != nil {
		return fmt.Errorf("creating the key (tenant %s): %w", o.tenant, err)
	}
	_, err := fmt.Fprintf(out, "API key %s for tenant %s (shown once, give it to the user):\n  %s\n", k.Key.ID, o.tenant, k.Secret)
	return err
}

// call sends a JSON request with the operator key and decodes the answer.
func (o operatorRequest) call(ctx context.Context, method, path string, body, into any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, o.server+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", o.key)
	resp, err := o.client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Detail string `json:"detail"`
		}
		if json.Unmarshal(data, &e) == nil && e.Detail != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Detail)
		}
		return errors.New(resp.Status)
	}
	return json.Unmarshal(data, into)
}
