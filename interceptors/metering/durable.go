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
	// DeadAfter is how long a record may go unrefreshed before any replica
	// bills it as an interrupted call (20 s).
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

	mu      sync.Mutex
	calls   map[*report]*tracked
	deletes []pendingDelete

	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

type tracked struct {
	key     string
	lastPut time.Time // zero: no record yet
}

type pendingDelete struct {
	key string
	at  time.Time
}

// opTimeout bounds each store operation of the durable loop.
const opTimeout = 2 * time.Second

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
	def(&o.DeadAfter, 20*time.Second)
	if o.Owner == "" {
		o.Owner = uuid.NewString()
	}
	d := &durable{m: m, store: store, o: o, calls: map[*report]*tracked{}, skip: interceptors.MethodSet(o.Skip...),
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
	d.calls[r] = &tracked{key: uuid.NewString()}
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

// removeEnded deletes the records of calls that ended before cutoff.
func (d *durable) removeEnded(ctx context.Context, cutoff time.Time) {
	d.mu.Lock()
	var due []pendingDelete
	keep := d.deletes[:0]
	for _, p := range d.deletes {
		if p.at.Before(cutoff) {
			due = append(due, p)
		} else {
			keep = append(keep, p)
		}
	}
	d.deletes = keep
	d.mu.Unlock()
	for _, p := range due {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		if err := d.store.Delete(octx, p.key); err != nil && ctx.Err() == nil {
			d.m.log.Debug("in-flight usage record not removed; a sweeper will bill its copy, deduplicated by id", "error", err)
		}
		cancel()
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
			continue
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
		ctx: r.ctx, method: r.meta.FullMethod(), info: interceptors.InfoFrom(r.ctx),
		tenant: r.id.TenantID, base: r.eventBase(), code: codes.Unavailable, d: now.Sub(r.start), at: now,
	}
	c.tokens, c.invokes, c.sessions = r.rec.Snapshot()
	rec := billing.InflightRecord{Owner: d.o.Owner, Tenant: c.tenant, Method: c.method, Start: r.start, Beat: now}
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
