// Command kgents-keygen makes a new API key and prints it once, with the
// entry to add to KGENTS_API_KEYS_FILE (which stores only its SHA-256).
//
//	go run ./cmd/kgents-keygen -tenant 6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11 -user u-42 -scopes read,write
package main

import (
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

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
	scopes := fs.String("scopes", "read", "comma-separated scopes: read, write, admin")
	if err := fs.Parse(args); err != nil {
		return err
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
