package restore

import (
	"net"
	"net/url"
)

// bindURL is a peer URL etcd can listen on: etcd refuses to bind a host name other than
// localhost ("expected IP in URL for binding"), so a named host listens on every address
// at the same port.
func bindURL(peer string) string {
	u, err := url.Parse(peer)
	if err != nil || u.Hostname() == "localhost" || net.ParseIP(u.Hostname()) != nil {
		return peer
	}
	u.Host = net.JoinHostPort("0.0.0.0", u.Port())
	return u.String()
}
