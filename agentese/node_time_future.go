package agentese

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// time.future: what is coming. The calendar of the API itself (daily
// request quotas reset at 00:00 UTC, monthly token quotas on the 1st) plus
// the tenant's own scheduled items. Everything is computed from the clock,
// so it is deterministic for a given time.
func init() { registerBuiltin(newTimeFuture) }

const (
	futureSlot     = "time.future"
	futureMaxItems = 32
	futureHorizon  = 366 * 24 * time.Hour
)

type schedule struct {
	mu     sync.Mutex
	nextID int
	items  []scheduled
}

type scheduled struct {
	id   int
	what string
	at   time.Time
}

// upcoming drops items whose time has passed and returns the rest in time order.
func (s *schedule) upcoming(now time.Time) []scheduled {
	s.items = slices.DeleteFunc(s.items, func(it scheduled) bool { return !it.at.After(now) })
	slices.SortFunc(s.items, func(a, b scheduled) int { return a.at.Compare(b.at) })
	return s.items
}

func scheduleOf(c *Call) *schedule {
	return slotOf(c.tenant(), futureSlot, func() *schedule { return &schedule{} })
}

func newTimeFuture(Deps) *Node {
	return &Node{
		Path:    "time.future",
		Handle:  "time.future",
		Summary: "Upcoming quota resets and your scheduled items.",
		Common:  []string{"forecast", "schedule", "cancel"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "Now, the next quota resets and the scheduled items.", Run: futureManifest},
			{Name: "forecast", Doc: "Day by day from today: quota resets and scheduled items.", Run: futureForecast,
				Kwargs: []Kwarg{{Name: "days", Type: TypeInteger, Ranged: true, Min: 1, Max: 31, Doc: "default 7"}}},
			{Name: "schedule", Doc: "Schedule an item (at most 32 pending, at most a year ahead).", Mutates: true, Run: futureSchedule,
				Kwargs: []Kwarg{
					{Name: "what", Type: TypeString, Required: true, MaxLen: 256, Doc: "what is due"},
					{Name: "at", Type: TypeString, Required: true, MaxLen: 64, Doc: "when, RFC 3339 (2026-12-01T09:00:00Z)"},
				}},
			{Name: "cancel", Doc: "Cancel a scheduled item.", Mutates: true, Run: futureCancel,
				Kwargs: []Kwarg{{Name: "id", Type: TypeInteger, Required: true, Ranged: true, Min: 1, Max: 1 << 31, Doc: "the item's id"}}},
		},
	}
}

func nextDay(now time.Time) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

func nextMonth(now time.Time) time.Time {
	y, m, _ := now.UTC().Date()
	return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
}

func itemsValue(items []scheduled) *structpb.Value {
	vs := make([]*structpb.Value, len(items))
	for i, it := range items {
		vs[i] = obj{"id": integer(it.id), "what": str(it.what), "at": ts(it.at)}.V()
	}
	return array(vs...)
}

func futureManifest(_ context.Context, c *Call) (Outcome, error) {
	now := c.Now()
	s := scheduleOf(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	day, month := nextDay(now), nextMonth(now)
	return Outcome{Value: obj{
		"now":                ts(now),
		"next_daily_reset":   ts(day),
		"seconds_to_daily":   integer(int(day.Sub(now).Seconds())),
		"next_monthly_reset": ts(month),
		"seconds_to_monthly": integer(int(month.Sub(now).Seconds())),
		"scheduled":          itemsValue(s.upcoming(now)),
		"scheduled_capacity": integer(futureMaxItems),
		"reset_rule_daily":   str("request quotas reset at 00:00 UTC"),
		"reset_rule_monthly": str("token quotas reset at 00:00 UTC on the 1st"),
		"billing_period":     str(now.UTC().Format("2006-01")),
	}.V()}, nil
}

func futureForecast(_ context.Context, c *Call) (Outcome, error) {
	now := c.Now()
	s := scheduleOf(c)
	s.mu.Lock()
	items := slices.Clone(s.upcoming(now))
	s.mu.Unlock()
	days := c.Args.Int("days", 7)
	out := make([]*structpb.Value, days)
	today := nextDay(now).Add(-24 * time.Hour)
	for i := range days {
		from, to := today.Add(time.Duration(i)*24*time.Hour), today.Add(time.Duration(i+1)*24*time.Hour)
		events := []string{}
		if from.After(now) { // today's resets have already happened
			events = append(events, "00:00 UTC daily request quota resets")
			if from.Day() == 1 {
				events = append(events, "00:00 UTC monthly token quota resets; a new billing period begins")
			}
		}
		for _, it := range items {
			if !it.at.Before(from) && it.at.Before(to) {
				events = append(events, fmt.Sprintf("%s #%d %s", it.at.UTC().Format("15:04"), it.id, it.what))
			}
		}
		out[i] = obj{"date": str(from.Format("2006-01-02")), "weekday": str(from.Weekday().String()), "events": strs(events)}.V()
	}
	return Outcome{Value: obj{"now": ts(now), "days": array(out...)}.V()}, nil
}

func futureSchedule(_ context.Context, c *Call) (Outcome, error) {
	now := c.Now()
	at, err := time.Parse(time.RFC3339, c.Args.Str("at"))
	if err != nil {
		return Outcome{}, newError(KindArgument, fmt.Sprintf(
			"kwarg \"at\" of %s must be an RFC 3339 time such as 2026-12-01T09:00:00Z, not %s.", c.Path.String(), quote(c.Args.Str("at"))))
	}
	if !at.After(now) || at.Sub(now) > futureHorizon {
		return Outcome{}, newError(KindArgument, fmt.Sprintf(
			"kwarg \"at\" of %s must be in the future and at most a year ahead (now is %s).", c.Path.String(), now.UTC().Format(time.RFC3339)))
	}
	s := scheduleOf(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.upcoming(now)) >= futureMaxItems {
		return Outcome{}, newError(KindPrecondition, fmt.Sprintf(
			"%d items are already scheduled, the most time.future keeps; cancel one first.", futureMaxItems))
	}
	s.nextID++
	it := scheduled{id: s.nextID, what: c.Args.Str("what"), at: at.UTC()}
	s.items = append(s.items, it)
	return Outcome{Value: obj{
		"id": integer(it.id), "what": str(it.what), "at": ts(it.at), "status": str("scheduled"),
		"in_seconds": integer(int(at.Sub(now).Seconds())),
	}.V()}, nil
}

func futureCancel(_ context.Context, c *Call) (Outcome, error) {
	id := c.Args.Int("id", 0)
	s := scheduleOf(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.items)
	s.items = slices.DeleteFunc(s.items, func(it scheduled) bool { return it.id == id })
	return Outcome{Value: obj{"id": integer(id), "cancelled": boolean(len(s.items) < n)}.V()}, nil
}
