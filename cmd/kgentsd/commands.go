package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kgents/kgents-go/backup"
	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/telemetry"
)

const usage = `Usage:
  kgentsd                          serve (configuration from the environment)
  kgentsd backup  --to DIR         snapshot every kgentsd stream and bucket into DIR
  kgentsd restore --from DIR       restore a backup into a NATS that does not have them
  kgentsd help                     this text

backup and restore use the same environment as serving (NATS_SERVERS,
NATS_CREDS, NATS_TLS_*, KGENTS_DATA_DIR for the embedded store). Run
'kgentsd backup -h' or 'kgentsd restore -h' for their flags;
docs/operations.md has the runbook.
`

// command runs what args ask for: serving without arguments.
func command(ctx context.Context, args []string, lookup config.Lookup, out, logw io.Writer) error {
	if len(args) == 0 {
		return run(ctx, lookup, out, logw)
	}
	switch args[0] {
	case "serve":
		if len(args) > 1 {
			return fmt.Errorf("serve takes no arguments (configuration comes from the environment)")
		}
		return run(ctx, lookup, out, logw)
	case "backup":
		return backupCommand(ctx, args[1:], lookup, out, logw)
	case "restore":
		return restoreCommand(ctx, args[1:], lookup, out, logw)
	case "help", "-h", "-help", "--help":
		_, err := fmt.Fprint(out, usage)
		return err
	default:
		_, _ = fmt.Fprint(logw, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// transferFlags are the flags backup and restore share.
type transferFlags struct {
	timeout, idle time.Duration
}

func (f *transferFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&f.timeout, "timeout", time.Hour, "give up after this long altogether")
	fs.DurationVar(&f.idle, "idle-timeout", time.Minute, "give up on a stream whose transfer moved no data for this long")
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%s: %w", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

func backupCommand(ctx context.Context, args []string, lookup config.Lookup, out, logw io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.SetOutput(logw)
	to := fs.String("to", "", "new or empty directory for the backup (required)")
	var tf transferFlags
	tf.register(fs)
	fs.Usage = func() {
		_, _ = fmt.Fprint(fs.Output(), "Usage: kgentsd backup --to DIR [flags]\n\nSnapshots every kgentsd stream and KV bucket (kgent-*, KV_kgent-*) with its\ndurable consumers' state into DIR, with DIR/manifest.json written last.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil || help(args) {
		return err
	}
	if *to == "" {
		fs.Usage()
		return errors.New("backup: --to DIR is required")
	}
	cfg, log, err := load(lookup, logw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, tf.timeout)
	defer cancel()
	nc, closeNATS, err := connect(ctx, cfg, log, false)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer closeNATS()
	m, err := backup.Backup(ctx, nc, *to, backup.Options{Logger: log, IdleTimeout: tf.idle})
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return summary(out, "backed up to "+*to, m)
}

func restoreCommand(ctx context.Context, args []string, lookup config.Lookup, out, logw io.Writer) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(logw)
	from := fs.String("from", "", "directory of a backup made by kgentsd backup (required)")
	replace := fs.Bool("replace", false, "delete streams that already exist (and their data) before restoring them")
	replicas := fs.Int("replicas", 0, "restore every stream with this many replicas (0: as backed up; 1 for a single server)")
	verifyOnly := fs.Bool("verify-only", false, "check the backup's files against its manifest and stop; touches no server")
	var tf transferFlags
	tf.register(fs)
	fs.Usage = func() {
		_, _ = fmt.Fprint(fs.Output(), "Usage: kgentsd restore --from DIR [flags]\n\nVerifies the backup in DIR, then restores every stream and bucket in it, with\ndurable consumers' positions, into the NATS kgentsd is configured for. Stop\nevery kgentsd first. Refuses streams that already exist unless --replace.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil || help(args) {
		return err
	}
	if *from == "" {
		fs.Usage()
		return errors.New("restore: --from DIR is required")
	}
	if *replicas < 0 || *replicas > 5 {
		return fmt.Errorf("restore: --replicas %d: want 0 (as backed up) or 1 to 5", *replicas)
	}
	if *verifyOnly {
		m, err := backup.Verify(*from)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		return summary(out, "verified "+*from, m)
	}
	cfg, log, err := load(lookup, logw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, tf.timeout)
	defer cancel()
	// Verify before anything else: a damaged backup must not even start
	// an embedded server on the store.
	if _, err := backup.Verify(*from); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	nc, closeNATS, err := connect(ctx, cfg, log, true)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer closeNATS()
	m, err := backup.Restore(ctx, nc, *from, backup.Options{Logger: log, IdleTimeout: tf.idle, Replace: *replace, Replicas: *replicas})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return summary(out, "restored from "+*from, m)
}

// help reports whether args asked for the usage (already printed by Parse).
func help(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			return true
		}
	}
	return false
}

func load(lookup config.Lookup, logw io.Writer) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(lookup)
	if err != nil {
		return nil, nil, fmt.Errorf("configuration:\n%w", err)
	}
	if !cfg.NATS.Enabled {
		return nil, nil, errors.New("NATS_ENABLED is false: kgentsd keeps its state in memory then, and there is nothing to back up or restore")
	}
	return cfg, telemetry.NewLogger(logw, cfg.Log.Format, cfg.Log.Level), nil
}

// connect reaches the NATS kgentsd uses. External servers: as kgentsd does,
// failing if none answers within NATS_CONNECT_TIMEOUT. The embedded store:
// if no kgentsd holds KGENTS_DATA_DIR, this process opens the store with an
// embedded server of its own (so a stopped store is backed up, or restored
// into, directly); if a kgentsd runs on it, a backup reaches its server on
// NATS_EMBEDDED_PORT and a restore (write) is refused.
func connect(ctx context.Context, cfg *config.Config, log *slog.Logger, write bool) (*nats.Conn, func(), error) {
	opts := streaming.Options{
		Enabled: true, Servers: cfg.NATS.Servers,
		Creds: cfg.NATS.Creds, TLSCA: cfg.NATS.TLSCA, TLSCert: cfg.NATS.TLSCert, TLSKey: cfg.NATS.TLSKey,
		ConnectTimeout: cfg.NATS.ConnectTimeout, Name: "kgentsd-backup", Logger: log,
	}
	release := func() {}
	running := ""
	if cfg.NATS.Embedded() {
		store := filepath.Join(cfg.DataDir, "jetstream")
		if !write {
			if _, err := os.Stat(store); err != nil {
				return nil, nil, fmt.Errorf("no embedded NATS store at %s (KGENTS_DATA_DIR=%s): nothing to back up; set KGENTS_DATA_DIR, or NATS_SERVERS for an external NATS", store, cfg.DataDir)
			}
		}
		rel, err := streaming.LockDir(cfg.DataDir)
		switch {
		case errors.Is(err, streaming.ErrDirInUse):
			if write {
				return nil, nil, fmt.Errorf("KGENTS_DATA_DIR %w: stop that kgentsd before restoring into its embedded store", err)
			}
			if cfg.NATS.EmbeddedPort < 0 {
				return nil, nil, fmt.Errorf("KGENTS_DATA_DIR %w and its embedded NATS listens on a random port (NATS_EMBEDDED_PORT=-1): stop it to back up the store directly, or run it with a fixed NATS_EMBEDDED_PORT", err)
			}
			// A running kgentsd's embedded server, on loopback.
			opts.Servers = []string{fmt.Sprintf("nats://127.0.0.1:%d", cfg.NATS.EmbeddedPort)}
			running = fmt.Sprintf(" (KGENTS_DATA_DIR %v, so this is its embedded server; if it is stopping, wait and retry)", err)
			log.Info("kgentsd is running on the data directory; backing up through its embedded NATS", "url", opts.Servers[0])
		case err != nil:
			return nil, nil, fmt.Errorf("KGENTS_DATA_DIR: %w", err)
		default:
			release = rel
			opts.EmbeddedPort, opts.StoreDir = -1, store
			log.Info("opening the embedded NATS store (no kgentsd is running on it)", "store", store)
		}
	}
	conn, err := streaming.Connect(ctx, opts)
	if err != nil {
		release()
		return nil, nil, err
	}
	closeAll := func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn.Close(cctx)
		release()
	}
	if !conn.Connected() {
		closeAll()
		return nil, nil, fmt.Errorf("NATS (%s) not reachable within NATS_CONNECT_TIMEOUT (%v)%s", strings.Join(streaming.RedactServers(opts.Servers), ","), cfg.NATS.ConnectTimeout, running)
	}
	return conn.NATS(), closeAll, nil
}

// summary prints what a backup holds, one line a stream.
func summary(out io.Writer, what string, m *backup.Manifest) error {
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	_, _ = fmt.Fprintf(tw, "%s (backup of %s, NATS %s)\n", what, m.Created.Format(time.RFC3339), m.Server.Version)
	_, _ = fmt.Fprintln(tw, "STREAM\tMESSAGES\tLAST SEQ\tBYTES\tCONSUMERS")
	for _, s := range m.Streams {
		var cons []string
		for _, c := range s.Consumers {
			cons = append(cons, fmt.Sprintf("%s (ack floor %d, %d unacknowledged, %d undelivered)", c.Name, c.AckFloor, c.AckPending, c.Pending))
		}
		_, _ = fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", s.Name, s.Messages, s.LastSeq, s.Bytes, strings.Join(cons, "; "))
	}
	if len(m.Absent) > 0 {
		_, _ = fmt.Fprintf(tw, "not on the server (never created there): %s\n", strings.Join(m.Absent, ", "))
	}
	return tw.Flush()
}
