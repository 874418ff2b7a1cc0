package streaming

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// ErrDirInUse is returned by LockDir when another process holds the lock.
var ErrDirInUse = errors.New("in use by another process")

// DirLockName is the lock file LockDir creates in a directory.
const DirLockName = "LOCK"

// LockDir takes an exclusive lock on dir (creating it), held until release is
// called or the process exits, and records this process's id in the lock
// file. If another process (or another LockDir in this one) holds it, the
// error wraps ErrDirInUse and names the holder's pid when it is known.
//
// kgentsd takes it on KGENTS_DATA_DIR before anything else touches the
// directory, and the embedded NATS server takes it on its store, so a second
// kgentsd on the same data directory refuses before it starts a second
// server on the same JetStream store. (Where flock is unavailable the lock
// is a no-op.)
func LockDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, DirLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		_ = f.Close()
		return nil, fmt.Errorf("%s is %w%s", dir, ErrDirInUse, holder)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			unlockFile(f)
			_ = f.Close()
		})
	}, nil
}
