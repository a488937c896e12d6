package guard

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"time"

	"github.com/etcdguard/etcdguard/store"
)

// Event is one audit record: every plan, confirm, refusal and undo. Objects cannot be
// appended to, so each event is an object of its own under <cluster>/guard/audit/.
type Event struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"` // plan, confirm, refuse, undo
	PlanID   string    `json:"plan_id"`
	Cluster  string    `json:"cluster"`
	User     string    `json:"user"`
	EtcdUser string    `json:"etcd_user,omitempty"`
	Host     string    `json:"host"`
	Range    Range     `json:"range"`
	Keys     int64     `json:"keys"`
	Result   string    `json:"result"`
}

// who returns the operating-system user and host for audit records.
func who() (string, string) {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name, host
}

// record writes ev to the store and the log. An audit write that fails is an error: a
// delete that cannot be audited does not run.
func record(ctx context.Context, st store.Store, ev Event) error {
	ev.Time = time.Now().UTC()
	ev.User, ev.Host = who()
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	key := fmt.Sprintf("%s/guard/audit/%s-%s-%s.json", ev.Cluster, ev.Time.Format("20060102T150405.000000000Z"), ev.PlanID, ev.Event)
	slog.InfoContext(ctx, "guard audit", "event", ev.Event, "plan", ev.PlanID, "cluster", ev.Cluster, "range", ev.Range.String(),
		"keys", ev.Keys, "result", ev.Result, "user", ev.User, "host", ev.Host)
	if err := store.PutBytes(ctx, st, key, b); err != nil {
		return fmt.Errorf("writing audit record %s: %w", key, err)
	}
	return nil
}
