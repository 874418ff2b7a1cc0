package metering

import (
	"context"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/interceptors"
)

// InflightStore keeps the durable records of calls in flight
// (billing.Inflight).
type InflightStore interface {
	Put(ctx context.Context, key string, r billing.InflightRecord) error
	Delete(ctx context.Context, key string) error
	Stale(ctx context.Context, cutoff time.Time) ([]billing.StaleInflight, error)
	Claim(ctx context.Context, st billing.StaleInflight) (bool, error)
}

// DurableOptions tune Durable; zero fields take the defaults.
type DurableOptions struct {
	// Tick is how often calls in flight are looked at (1 s).
	Tick time.Duration
	// MinAge is the age from which a call gets a record (1 s): shorter
	// calls cost nothing.
	MinAge time.Duration
	// Refresh is how often a call's record is rewritten with what it has
	// served so far (5 s).
	Refresh time.Duration
	// DeadAfter is how long a record may go unrefreshed before another
	// replica bills it as an interrupted call (45 s). A live replica cut
	// off from NATS cannot refresh its records either: the sweeper's copy
	// then reaches the metering stream first and the call's own events,
	// under the same ids, are dropped as copies — billed once, but as an
	// interrupted call. So DeadAfter is well beyond the outages a replica
	// rides out (a NATS node's failover: ~15 s measured), at the price of
	// billing a dead replica's calls that much later.
	DeadAfter time.Duration
	// Owner names this replica in the records (logs only).
	Owner string
	// Skip lists methods (full names) that get no record: long streams
	// whose only usage is their api.request (watches), where a record per
	// call would cost a KV write every Refresh per watcher.
	Skip []string
}

// durable is the Meter's record keeper and sweeper: one goroutine, owned by
// the Meter, started by Durable, ended by Close (or its context).
type durable struct {
	m     *Meter
	store InflightStore
	o     DurableOptions
	skip  interceptors.Methods

	// process names this process in its records: a sweeper never bills
	// its own process's records (it is alive: its calls bill themselves).
	// Owner is not enough, a replica's name outlives its process.
	process string

	mu      sync.Mutex
	calls   map[*report]*tracked
	deletes []pendingDelete // records to remove, oldest first; retried until removed

	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

type tracked struct {
	key     string    // the record's key, chosen when it is first written
	lastPut time.Time // zero: no record yet
}

type pendingDelete struct {
	key string
	at  time.Time // when the call ended
}

const (
	// opTimeout bounds each store operation of the durable loop.
	opTimeout = 2 * time.Second
	// maxPendingDeletes bounds the records of ended calls kept for removal
	// while NATS is away; past it the oldest are given up (the sweepers
	// bill their copies, deduplicated by id).
	maxPendingDeletes = 100_000
	// pendingDeleteGiveUp is how long a removal is retried: the bucket's
	// TTL (billing.Inflight) forgets the record by then.
	pendingDeleteGiveUp = time.Hour
)

// DefaultDeadAfter is DurableOptions.DeadAfter's default.
const DefaultDeadAfter = 45 * time.Second

// Durable makes long calls survive their replica: a call running for
// MinAge gets a durable record (InflightStore) of the usage events it would
// emit if it ended then — its api.request as interrupted (UNAVAILABLE, 503,
// the duration so far) and what the services recorded so far — refreshed
// every Refresh, and removed once the call has ended and its own events are
// on their way. Every replica sweeps the records nobody refreshed for
// DeadAfter (their replica died) and emits their events. The ids are the
// ones the call's own end gives the same events, so a call that did end
// after all (a replica stalled, not dead) is billed once.
//
// The loop stops at Close (removing the records of ended calls) or, at
// once and leaving its records to the other replicas' sweepers as a
// killed process would, when ctx ends.
func (m *Meter) Durable(ctx context.Context, store InflightStore, o DurableOptions) *Meter {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Tick, time.Second)
	def(&o.MinAge, time.Second)
	def(&o.Refresh, 5*time.Second)
	def(&o.DeadAfter, DefaultDeadAfter)
	if o.Owner == "" {
		o.Owner = uuid.NewString()
	}
	d := &durable{m: m, store: store, o: o, process: uuid.NewString(), calls: map[*report]*tracked{}, skip: interceptors.MethodSet(o.Skip...),
		stop: make(chan struct{}), stopped: make(chan struct{})}
	m.durable = d
	go d.run(ctx)
	return m
}

func (d *durable) track(r *report) {
	if d.skip.Match(r.ctx, r.meta) {
		return
	}
	d.mu.Lock()
	d.calls[r] = &tracked{}
	d.mu.Unlock()
}

// done is called once the call's events were dispatched: its record (if
// any) is removed a tick later, when they have reached the publisher.
func (d *durable) done(r *report) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.calls[r]; t != nil && !t.lastPut.IsZero() {
		d.deletes = append(d.deletes, pendingDelete{key: t.key, at: time.Now()})
	}
	delete(d.calls, r)
}

func (d *durable) run(ctx context.Context) {
	defer close(d.stopped)
	t := time.NewTicker(d.o.Tick)
	defer t.Stop()
	var lastSweep time.Time
	for {
		select {
		case <-ctx.Done():
			return // as if killed: the records stay for the sweepers
		case <-d.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		d.removeEnded(ctx, now.Add(-d.o.Tick))
		d.write(ctx, now)
		if now.Sub(lastSweep) >= d.o.Refresh {
			lastSweep = now
			d.sweep(ctx, now)
		}
	}
}

// removeEnded deletes the records of calls that ended before cutoff. A
// removal that fails (NATS away) stays queued and is retried next tick:
// dropping it would leave the record to a sweeper, which would bill the
// ended call as interrupted if its copy got out before the call's own
// events (still in this replica's spool). The pass stops at the first
// failure: the rest would fail the same way, each after opTimeout.
func (d *durable) removeEnded(ctx context.Context, cutoff time.Time) {
	d.mu.Lock()
	n := 0
	for n < len(d.deletes) && d.deletes[n].at.Before(cutoff) {
		n++
	}
	due := append([]pendingDelete(nil), d.deletes[:n]...)
	d.mu.Unlock()
	done := 0
	for _, p := range due {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := d.store.Delete(octx, p.key)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				d.m.log.Debug("in-flight usage record not removed; retrying", "error", err, "pending", len(due)-done)
			}
			break
		}
		done++
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Deletes are appended in time order and only this loop removes them,
	// so the first done entries are the ones removed.
	d.deletes = d.deletes[done:]
	giveUp := time.Now().Add(-pendingDeleteGiveUp)
	drop := 0
	for drop < len(d.deletes) && (len(d.deletes)-drop > maxPendingDeletes || d.deletes[drop].at.Before(giveUp)) {
		drop++
	}
	if drop > 0 {
		d.m.log.Warn("gave up removing in-flight usage records of ended calls; a sweeper bills their copies (deduplicated by id)", "records", drop)
		d.deletes = d.deletes[drop:]
	}
}

// write records the calls old enough whose record is due.
func (d *durable) write(ctx context.Context, now time.Time) {
	type due struct {
		r *report
		t *tracked
	}
	var list []due
	d.mu.Lock()
	for r, t := range d.calls {
		if now.Sub(r.start) >= d.o.MinAge && now.Sub(t.lastPut) >= d.o.Refresh {
			if t.key == "" {
				t.key = uuid.NewString() // most calls end before they need one
			}
			list = append(list, due{r, t})
		}
	}
	d.mu.Unlock()
	for _, x := range list {
		rec := d.record(x.r, now)
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := d.store.Put(octx, x.t.key, rec)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				d.m.log.Debug("in-flight usage record not written", "error", err)
			}
			break // the rest would fail the same way, each after opTimeout
		}
		d.mu.Lock()
		if _, live := d.calls[x.r]; live {
			x.t.lastPut = now
		} else {
			// Ended while we wrote: remove it with the others.
			d.deletes = append(d.deletes, pendingDelete{key: x.t.key, at: now})
		}
		d.mu.Unlock()
	}
}

// record is what r would emit if it ended at now.
func (d *durable) record(r *report, now time.Time) billing.InflightRecord {
	c := &call{
		ctx: r.ctx, method: interceptors.FullMethod(r.meta), info: interceptors.InfoFrom(r.ctx),
		tenant: r.id.TenantID, base: r.eventBase(), code: codes.Unavailable, d: now.Sub(r.start), at: now,
	}
	c.tokens, c.invokes, c.sessions = r.rec.Snapshot()
	rec := billing.InflightRecord{Owner: d.o.Owner, Process: d.process, Tenant: c.tenant, Method: c.method, Start: r.start, Beat: now}
	for _, ev := range d.m.buildEvents(c) {
		if b, err := billing.Marshal(ev); err == nil {
			rec.Events = append(rec.Events, b)
		}
	}
	return rec
}

// sweep bills the calls whose replica stopped refreshing their records.
func (d *durable) sweep(ctx context.Context, now time.Time) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	stale, err := d.store.Stale(octx, now.Add(-d.o.DeadAfter))
	cancel()
	if err != nil && ctx.Err() == nil {
		d.m.log.Debug("in-flight usage records not swept", "error", err)
	}
	for _, st := range stale {
		if st.Record.Process == d.process {
			// Ours, and we are alive: the call is running (its refresh
			// failed) or ended (its own events are on their way and the
			// record's removal is pending).
			continue
		}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		ok, err := d.store.Claim(octx, st)
		cancel()
		if err != nil || !ok {
			continue // another replica took it, or it revived
		}
		events := make([]event.Event, 0, len(st.Record.Events))
		for _, b := range st.Record.Events {
			var ev event.Event
			if err := ev.UnmarshalJSON(b); err != nil {
				d.m.failed.Inc()
				continue
			}
			events = append(events, ev)
		}
		if len(events) > 0 {
			d.m.emit.Emit(events)
		}
		d.m.log.Warn("billed a call whose replica died mid-call", "tenant", st.Record.Tenant, "method", st.Record.Method,
			"owner", st.Record.Owner, "started", st.Record.Start, "last_seen", st.Record.Beat, "events", len(st.Record.Events))
	}
}

// closeDurable stops the loop and removes the records of ended calls
// (called by Close, after the queue is drained).
func (m *Meter) closeDurable(ctx context.Context) {
	d := m.durable
	if d == nil {
		return
	}
	d.once.Do(func() { close(d.stop) })
	select {
	case <-d.stopped:
	case <-ctx.Done():
		return
	}
	d.removeEnded(ctx, time.Now().Add(time.Hour))
}
