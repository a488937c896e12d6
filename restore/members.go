package restore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/types"
)

// Member is one member of the new cluster and where its data goes.
type Member struct {
	Name     string   `json:"name"`
	PeerURLs []string `json:"peer_urls"`
	DataDir  string   `json:"data_dir"`
	WALDir   string   `json:"wal_dir,omitempty"`
}

// ParseInitialCluster reads --initial-cluster (name=url,name=url,...) in its order; a
// name may repeat to give a member several peer URLs, as etcd allows.
func ParseInitialCluster(s string) ([]Member, error) {
	if s == "" {
		return nil, errors.New("--initial-cluster is required: the new cluster's members, as name=https://host:2380,name=https://host:2380")
	}
	if _, err := types.NewURLsMap(s); err != nil {
		return nil, fmt.Errorf("malformed --initial-cluster %q: want name=https://host:2380,...: %w", s, err)
	}
	var out []Member
	for entry := range strings.SplitSeq(s, ",") {
		name, u, _ := strings.Cut(entry, "=")
		if name == "" {
			return nil, fmt.Errorf("malformed --initial-cluster %q: an entry has no member name", s)
		}
		i := slices.IndexFunc(out, func(m Member) bool { return m.Name == name })
		if i < 0 {
			out = append(out, Member{Name: name})
			i = len(out) - 1
		}
		out[i].PeerURLs = append(out[i].PeerURLs, u)
	}
	return out, nil
}

// MemberPlan is what the member flags of `restore` ask for.
type MemberPlan struct {
	InitialCluster string
	AllMembers     bool
	// One member: --name, --initial-advertise-peer-urls, --data-dir, --wal-dir.
	Name        string
	AdvertiseTo []string
	DataDir     string
	WALDir      string
	// All members: DataDir is their parent, or DataDirTemplate with {name}.
	DataDirTemplate string
}

// Members turns the flags into the members to write, refusing what etcd would refuse
// later, when it is more confusing.
func (p MemberPlan) Members() ([]Member, error) {
	all, err := ParseInitialCluster(p.InitialCluster)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = m.Name
	}
	if p.AllMembers {
		switch {
		case p.Name != "":
			return nil, fmt.Errorf("--name cannot be used with --all-members: every member of --initial-cluster is written")
		case len(p.AdvertiseTo) > 0:
			return nil, fmt.Errorf("--initial-advertise-peer-urls cannot be used with --all-members: each member's URLs come from --initial-cluster")
		case p.WALDir != "":
			return nil, fmt.Errorf("--wal-dir cannot be used with --all-members: each member keeps its WAL in its data dir")
		case p.DataDir == "" && p.DataDirTemplate == "":
			return nil, fmt.Errorf("--all-members needs --data-dir (the parent of the members' data dirs) or --data-dir-template")
		}
		tmpl := p.DataDirTemplate
		if tmpl == "" {
			tmpl = filepath.Join(p.DataDir, "{name}.etcd")
		} else if !strings.Contains(tmpl, "{name}") {
			return nil, fmt.Errorf("--data-dir-template %q has no {name}: every member needs its own data dir", tmpl)
		}
		for i := range all {
			all[i].DataDir = strings.ReplaceAll(tmpl, "{name}", all[i].Name)
		}
		return all, nil
	}

	if p.DataDirTemplate != "" {
		return nil, fmt.Errorf("--data-dir-template needs --all-members; for one member use --data-dir")
	}
	if p.Name == "" {
		return nil, fmt.Errorf("--name is required (one of %s), or use --all-members to write every member", strings.Join(names, ", "))
	}
	i := slices.Index(names, p.Name)
	if i < 0 {
		return nil, fmt.Errorf("--name %q is not in --initial-cluster (members: %s)", p.Name, strings.Join(names, ", "))
	}
	m := all[i]
	if len(p.AdvertiseTo) > 0 {
		if _, err := types.NewURLs(p.AdvertiseTo); err != nil {
			return nil, fmt.Errorf("malformed --initial-advertise-peer-urls %q: %w", strings.Join(p.AdvertiseTo, ","), err)
		}
		if !sameURLs(p.AdvertiseTo, m.PeerURLs) {
			return nil, fmt.Errorf("--initial-advertise-peer-urls %s does not match %s's URLs in --initial-cluster (%s)",
				strings.Join(p.AdvertiseTo, ","), m.Name, strings.Join(m.PeerURLs, ","))
		}
	}
	m.DataDir, m.WALDir = p.DataDir, p.WALDir
	if m.DataDir == "" {
		m.DataDir = m.Name + ".etcd" // etcd's and etcdutl's default
	}
	return []Member{m}, nil
}

func sameURLs(a, b []string) bool {
	ua, errA := types.NewURLs(a)
	ub, errB := types.NewURLs(b)
	return errA == nil && errB == nil && types.URLs(ua).String() == types.URLs(ub).String()
}

// CheckToken refuses a restore of some members of --initial-cluster without
// --initial-cluster-token: each host's run would pick its own fresh token, and members
// restored with different tokens never form one cluster. Restoring every member in one
// run may leave the token to NewToken.
func CheckToken(members []Member, initialCluster, token string) error {
	if token != "" {
		return nil
	}
	all, err := ParseInitialCluster(initialCluster)
	if err != nil || len(all) <= len(members) {
		return err
	}
	names := make([]string, len(members))
	for i, m := range members {
		names[i] = m.Name
	}
	return fmt.Errorf("--initial-cluster has %d members and this run restores only %s: give --initial-cluster-token, the same on every member's run (each run would pick its own token otherwise, and the members would never form one cluster), or restore all of them in one run with --all-members",
		len(all), strings.Join(names, ", "))
}

// NewToken returns a fresh --initial-cluster-token, so a restored cluster gets a new
// cluster ID and can never be mistaken for (or joined to) the old one.
func NewToken() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "etcd-restore-" + hex.EncodeToString(b[:])
}
