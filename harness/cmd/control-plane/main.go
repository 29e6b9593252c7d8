// Command control-plane runs a real Kubernetes control plane for the tests: etcd,
// kube-apiserver and kube-controller-manager, the binaries built from their Go modules
// (harness/go.mod's tool directives), as child processes with a real cluster's flags,
// on 127.0.0.1 and ports the OS chooses, with certificates and keys made for this run.
//
//	control-plane [-bin-dir DIR] [-dir DIR] [-ttl 1h] [-start-timeout 5m]
//
// When the API server is ready (its /readyz answers ok, the issuer's OIDC discovery
// document is readable without credentials, and kube-controller-manager has created the
// "default" namespace's ServiceAccount and kube-root-ca.crt), it prints one JSON line on
// stdout:
//
//	{"server":"https://127.0.0.1:PORT","issuer":"https://127.0.0.1:PORT","ca_file":"DIR/ca.crt",
//	 "admin_kubeconfig":"DIR/admin.kubeconfig","dir":"DIR","pid":N,"logs":{...}}
//
// and writes the same object to DIR/control-plane.json. It stops everything, and
// deletes DIR unless -dir was given, when its stdin closes (the parent died or let go:
// keep stdin open, a pipe or a terminal), when -ttl has passed since it started, or on
// SIGTERM/SIGINT. Its children get SIGKILL if it dies without stopping them.
//
//	control-plane kubeconfig -dir DIR -user NAME [-group GROUP]... -out FILE
//
// writes a kubeconfig for the running control plane in DIR whose client certificate,
// signed by its client CA, is user NAME in the groups given (e.g.
// -user system:node:n1 -group system:nodes).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	// The parent-death signal of the children follows the thread that started them:
	// keep the main goroutine, which starts them, on the main thread, which lives as
	// long as the process (golang/go#27505).
	runtime.LockOSThread()
	if len(os.Args) > 1 && os.Args[1] == "kubeconfig" {
		if err := kubeconfigCommand(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
			os.Exit(2)
		}
		return
	}
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}
}

// ready is the line printed when the control plane is ready.
type ready struct {
	Server          string            `json:"server"`
	Issuer          string            `json:"issuer"`
	CAFile          string            `json:"ca_file"`
	AdminKubeconfig string            `json:"admin_kubeconfig"`
	Dir             string            `json:"dir"`
	PID             int               `json:"pid"`
	Logs            map[string]string `json:"logs"`
}

// line is r as one line of JSON, newline included.
func (r ready) line() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("control-plane", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "", "where etcd, kube-apiserver and kube-controller-manager are (default: this program's directory)")
	dir := fs.String("dir", "", "where to write certificates, kubeconfigs, logs and etcd's data (default: a new temporary directory, deleted at exit)")
	ttl := fs.Duration("ttl", time.Hour, "stop after this long, whatever happens")
	startTimeout := fs.Duration("start-timeout", 5*time.Minute, "give up when not ready after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	stop := stopSignal(stdin, time.After(*ttl), signals)

	bins, err := findBinaries(*binDir)
	if err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "control-plane-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	} else if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	p := plane{dir: abs}
	ca, err := writePKI(p.dir)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	sup := newSupervisor()
	defer func() { sup.stop(10 * time.Second) }()
	ctx, cancel := context.WithTimeout(context.Background(), *startTimeout)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for attempt := 1; ; attempt++ {
		err = start(ctx, sup, p.withFreePorts, bins, ca, &p)
		if err != nil && isClosed(stop) {
			return errors.New("stopped before the control plane was ready")
		}
		if err == nil {
			break
		}
		if !errors.Is(err, errAddressInUse) || attempt == 3 {
			return err
		}
		sup.stop(10 * time.Second)
		sup = newSupervisor()
		if err := os.RemoveAll(p.path("etcd-data")); err != nil {
			return err
		}
	}

	r := ready{
		Server:          p.server(),
		Issuer:          p.issuer(),
		CAFile:          p.path(caCert),
		AdminKubeconfig: p.path(adminKubeconfig),
		Dir:             p.dir,
		PID:             os.Getpid(),
		Logs:            map[string]string{},
	}
	for _, c := range sup.children {
		r.Logs[c.name] = c.log
	}
	line, err := r.line()
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.path(readyFile), line, 0o644); err != nil {
		return err
	}
	if _, err := stdout.Write(line); err != nil {
		return err
	}
	cancel()
	select {
	case <-stop:
		return nil
	case c := <-sup.exited:
		return c.failure()
	}
}

// binaries are the paths of the three components.
type binaries struct {
	etcd, apiserver, controllerManager string
}

// findBinaries looks in dir (default: this program's own directory) for the binaries
// `go build -o DIR tool` writes: kube-apiserver, kube-controller-manager, and etcd's
// server, which go names "server" (its package path ends in /v3: go help build); a
// binary named etcd is preferred when present.
func findBinaries(dir string) (binaries, error) {
	if dir == "" {
		self, err := os.Executable()
		if err != nil {
			return binaries{}, err
		}
		dir = filepath.Dir(self)
	}
	find := func(names ...string) (string, error) {
		for _, name := range names {
			path := filepath.Join(dir, name)
			if info, err := os.Stat(path); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
				return path, nil
			}
		}
		return "", fmt.Errorf("%s not found in %s: build the harness with `bash scripts/harness.sh` (or `go build -o %s tool ./cmd/...` in harness/)", names[0], dir, dir)
	}
	var b binaries
	var err error
	if b.etcd, err = find("etcd", "server"); err != nil {
		return b, err
	}
	if b.apiserver, err = find("kube-apiserver"); err != nil {
		return b, err
	}
	if b.controllerManager, err = find("kube-controller-manager"); err != nil {
		return b, err
	}
	return b, nil
}

// withFreePorts gives p three loopback ports the OS has just handed out. Another
// process may take one before a component binds it: start then reports errAddressInUse.
func (p *plane) withFreePorts() error {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var got []int
	for i := 0; i < 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		got = append(got, l.Addr().(*net.TCPAddr).Port)
	}
	p.ports = ports{apiserver: got[0], etcdClient: got[1], etcdPeer: got[2]}
	return nil
}

// start picks ports, writes the kubeconfigs for them, starts the three components and
// waits until the control plane is ready.
func start(ctx context.Context, sup *supervisor, pickPorts func() error, bins binaries, ca *authority, p *plane) error {
	if err := pickPorts(); err != nil {
		return err
	}
	// kubeadm's identities (cmd/kubeadm/app/phases/kubeconfig/kubeconfig.go, v1.34.4):
	// the admin in system:masters, the controller manager as system:kube-controller-manager,
	// which the API server's bootstrap RBAC binds.
	if err := writeKubeconfig(p.path(adminKubeconfig), p.server(), p.path(caCert), ca, "kubernetes-admin", []string{"system:masters"}); err != nil {
		return err
	}
	if err := writeKubeconfig(p.path(kcmKubeconfig), p.server(), p.path(caCert), ca, "system:kube-controller-manager", nil); err != nil {
		return err
	}
	components := []struct {
		name, path string
		args       []string
	}{
		{"etcd", bins.etcd, etcdArgs(*p)},
		{"kube-apiserver", bins.apiserver, apiserverArgs(*p)},
		{"kube-controller-manager", bins.controllerManager, kcmArgs(*p)},
	}
	// All at once: the API server retries etcd, the controller manager the API server.
	for _, c := range components {
		if _, err := sup.start(c.name, c.path, c.args, p.path(c.name+".log")); err != nil {
			return err
		}
	}
	err := waitReady(ctx, *p, sup.exited)
	var exited *childExited
	if errors.As(err, &exited) && logMentions(exited.child.log, "address already in use") {
		return fmt.Errorf("%w: %v", errAddressInUse, err)
	}
	return err
}

// childExited is the error of a component that stopped before the control plane was ready.
type childExited struct{ child *child }

func (e *childExited) Error() string { return e.child.failure().Error() }

// waitReady polls until the control plane serves what the tests need, in order:
//   - /readyz answers ok (the API server's own readiness, etcd included);
//   - the issuer's discovery is readable without credentials (after binding the
//     discovery role to system:unauthenticated);
//   - kube-controller-manager has done its first work: the "default" ServiceAccount and
//     the kube-root-ca.crt ConfigMap of namespace default exist.
func waitReady(ctx context.Context, p plane, exited <-chan *child) error {
	admin, err := adminClient(p)
	if err != nil {
		return err
	}
	anonymous, err := anonymousClient(p)
	if err != nil {
		return err
	}
	steps := []struct {
		what string
		ok   func() (bool, error)
	}{
		{"kube-apiserver's /readyz", func() (bool, error) {
			status, _, err := get(ctx, admin, p.server()+"/readyz")
			return err == nil && status == http.StatusOK, nil
		}},
		{"the discovery role binding", func() (bool, error) {
			return bindDiscovery(ctx, admin, p)
		}},
		{"OIDC discovery without credentials", func() (bool, error) {
			status, body, err := get(ctx, anonymous, p.issuer()+"/.well-known/openid-configuration")
			if err != nil || status != http.StatusOK {
				return false, nil
			}
			var doc struct {
				Issuer  string `json:"issuer"`
				JWKSURI string `json:"jwks_uri"`
			}
			if err := json.Unmarshal(body, &doc); err != nil {
				return false, fmt.Errorf("discovery document: %w", err)
			}
			if doc.Issuer != p.issuer() {
				return false, fmt.Errorf("discovery document names issuer %q, not %q", doc.Issuer, p.issuer())
			}
			status, _, err = get(ctx, anonymous, doc.JWKSURI)
			return err == nil && status == http.StatusOK, nil
		}},
		{"kube-controller-manager's default ServiceAccount", func() (bool, error) {
			status, _, err := get(ctx, admin, p.server()+"/api/v1/namespaces/default/serviceaccounts/default")
			return err == nil && status == http.StatusOK, nil
		}},
		{"kube-controller-manager's kube-root-ca.crt", func() (bool, error) {
			status, _, err := get(ctx, admin, p.server()+"/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
			return err == nil && status == http.StatusOK, nil
		}},
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for _, step := range steps {
		for {
			ok, err := step.ok()
			if err != nil {
				return fmt.Errorf("%s: %w", step.what, err)
			}
			if ok {
				break
			}
			select {
			case c := <-exited:
				return &childExited{c}
			case <-ctx.Done():
				return fmt.Errorf("not ready in time: still waiting for %s (logs in %s)", step.what, p.dir)
			case <-tick.C:
			}
		}
	}
	return nil
}

// discoveryBinding lets anyone, authenticated or not, read the issuer's discovery
// document and keys, as Kubernetes documents for relying parties outside the cluster
// ("Service account issuer discovery" in Configure Service Accounts for Pods:
// `kubectl create clusterrolebinding oidc-reviewer --clusterrole=system:service-account-issuer-discovery
// --group=system:unauthenticated`). The bootstrap binding of that role covers
// system:serviceaccounts only (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go,
// ClusterRoleBindings, v1.34.4).
const discoveryBinding = `{
  "apiVersion": "rbac.authorization.k8s.io/v1",
  "kind": "ClusterRoleBinding",
  "metadata": {"name": "oidc-reviewer"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:service-account-issuer-discovery"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}]
}`

func bindDiscovery(ctx context.Context, admin *http.Client, p plane) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		p.server()+"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", strings.NewReader(discoveryBinding))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := admin.Do(req)
	if err != nil {
		return false, nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated, http.StatusConflict:
		return true, nil
	case http.StatusServiceUnavailable, http.StatusInternalServerError, http.StatusForbidden:
		// RBAC's post-start hook may still be running.
		return false, nil
	default:
		return false, fmt.Errorf("POST clusterrolebindings: %s: %s", resp.Status, body)
	}
}

func get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, body, err
}

func caPool(p plane) (*x509.CertPool, error) {
	pem, err := os.ReadFile(p.path(caCert))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", p.path(caCert))
	}
	return pool, nil
}

// anonymousClient trusts the cluster CA and presents no credentials: a relying party.
func anonymousClient(p plane) (*http.Client, error) {
	pool, err := caPool(p)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}, nil
}

// adminClient is anonymousClient with a system:masters client certificate.
func adminClient(p plane) (*http.Client, error) {
	pool, err := caPool(p)
	if err != nil {
		return nil, err
	}
	ca, err := loadAuthority(p.path(caCert), p.path(caKey))
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.issue(leaf{commonName: "control-plane", organization: []string{"system:masters"}, client: true})
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: []tls.Certificate{cert},
		}},
	}, nil
}

// groups is a repeatable -group flag.
type groups []string

func (g *groups) String() string     { return strings.Join(*g, ",") }
func (g *groups) Set(v string) error { *g = append(*g, v); return nil }

func kubeconfigCommand(args []string) error {
	fs := flag.NewFlagSet("control-plane kubeconfig", flag.ContinueOnError)
	dir := fs.String("dir", "", "the running control plane's directory (its JSON line's \"dir\")")
	user := fs.String("user", "", "the user name (the client certificate's common name)")
	out := fs.String("out", "", "where to write the kubeconfig")
	var gs groups
	fs.Var(&gs, "group", "a group (the certificate's organization); repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *user == "" || *out == "" {
		return errors.New("-dir, -user and -out are required")
	}
	data, err := os.ReadFile(filepath.Join(*dir, readyFile))
	if err != nil {
		return fmt.Errorf("no running control plane in %s: %w", *dir, err)
	}
	var r ready
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(*dir, readyFile), err)
	}
	ca, err := loadAuthority(filepath.Join(*dir, caCert), filepath.Join(*dir, caKey))
	if err != nil {
		return err
	}
	return writeKubeconfig(*out, r.Server, filepath.Join(*dir, caCert), ca, *user, gs)
}
