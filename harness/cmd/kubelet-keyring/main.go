// Command kubelet-keyring runs the kubelet's own image credential provider code
// (k8s.io/kubernetes v1.34.4 pkg/credentialprovider/plugin) as the kubelet wires it, and
// reports what it returns.
//
// At start it does what the kubelet does at start (pkg/kubelet/kubelet.go NewMainKubelet
// and pkg/kubelet/kuberuntime/kuberuntime_manager.go NewKubeGenericRuntimeManager):
//
//   - a token manager, token.NewManager(kubeClient) (pkg/kubelet/token/token_manager.go),
//     over a client that authenticates with the node's kubeconfig (system:node:NAME in
//     system:nodes), whose GetServiceAccountToken is the plugin's getServiceAccountToken;
//   - getServiceAccount: a GET of the ServiceAccount with that client, as kubelet.go sets
//     it when the KubeletServiceAccountTokenForCredentialProviders gate is on (beta, on by
//     default in 1.34);
//   - plugin.RegisterCredentialProviderPlugins(config, binDir, ...), once per --config.
//
// Then it reads one JSON object a line on stdin, a pull as image_manager.go EnsureImageExists
// makes it:
//
//	{"namespace", "pod", "pod_uid", "service_account", "image", "pull"}
//
// and calls NewExternalCredentialProviderDockerKeyring(namespace, pod, podUID,
// serviceAccount).Lookup(image). It writes one JSON line per request: the credentials the
// keyring returned, how many times the kubelet's code has run each provider and how many
// of those runs failed (its own metrics, kubelet_credential_provider_plugin_duration and
// _errors_total: a Lookup served from the plugin cache runs nothing), the token requests
// the kubelet made for this lookup (with the token's claims, never the token), the
// kubelet's log lines, and with "pull" a pull of that reference by go-containerregistry
// with the first credentials returned.
//
// Usage: kubelet-keyring --config FILE [--config FILE...] --bin-dir DIR --kubeconfig FILE
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
	"k8s.io/kubernetes/pkg/kubelet/token"

	"cloudsmith-access-token/harness/internal/pull"
)

// Request is one pull's Lookup.
type Request struct {
	Namespace      string `json:"namespace"`
	Pod            string `json:"pod"`
	PodUID         string `json:"pod_uid"`
	ServiceAccount string `json:"service_account"`
	Image          string `json:"image"`
	// Pull, when set, is pulled with the first credentials the keyring returned.
	Pull string `json:"pull,omitempty"`
}

// Credential is one TrackedAuthConfig of the Lookup.
type Credential struct {
	Username string `json:"username"`
	Password string `json:"password"`
	// ServiceAccount is the credential's source, when the plugin ran in service account
	// token mode ("namespace/name").
	ServiceAccount string `json:"service_account,omitempty"`
}

// TokenRequest is one call the plugin made to getServiceAccountToken.
type TokenRequest struct {
	Namespace      string   `json:"namespace"`
	ServiceAccount string   `json:"service_account"`
	Audiences      []string `json:"audiences"`
	BoundKind      string   `json:"bound_kind,omitempty"`
	BoundName      string   `json:"bound_name,omitempty"`
	// Claims of the token issued (the JWT payload, unverified), never the token.
	Claims map[string]any `json:"claims,omitempty"`
	Error  string         `json:"error,omitempty"`
}

// Answer is the line written for one Request.
type Answer struct {
	Found         bool             `json:"found"`
	Credentials   []Credential     `json:"credentials"`
	Execs         map[string]int64 `json:"execs"`
	ExecErrors    map[string]int64 `json:"exec_errors"`
	TokenRequests []TokenRequest   `json:"token_requests"`
	Logs          []string         `json:"logs"`
	Pull          *pull.Result     `json:"pull,omitempty"`
}

// recorder collects what happens during one Lookup.
type recorder struct {
	mu     sync.Mutex
	tokens []TokenRequest
	logs   bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logs.Write(p)
}

func (r *recorder) take() ([]TokenRequest, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tokens := r.tokens
	r.tokens = nil
	var logs []string
	for _, line := range strings.Split(strings.TrimSpace(r.logs.String()), "\n") {
		if line != "" {
			logs = append(logs, line)
		}
	}
	r.logs.Reset()
	if tokens == nil {
		tokens = []TokenRequest{}
	}
	if logs == nil {
		logs = []string{}
	}
	return tokens, logs
}

// claims decodes a JWT's payload without verifying it.
func claims(jwt string) map[string]any {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var out map[string]any
	if json.Unmarshal(payload, &out) != nil {
		return nil
	}
	return out
}

// counts reads a per-plugin count from the kubelet's own metrics.
func counts() (execs, failures map[string]int64) {
	execs, failures = map[string]int64{}, map[string]int64{}
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		fail(fmt.Errorf("gathering the kubelet's metrics: %w", err))
	}
	for _, family := range families {
		for _, metric := range family.GetMetric() {
			var plugin string
			for _, label := range metric.GetLabel() {
				if label.GetName() == "plugin_name" {
					plugin = label.GetValue()
				}
			}
			switch family.GetName() {
			case "kubelet_credential_provider_plugin_duration":
				execs[plugin] = int64(metric.GetHistogram().GetSampleCount())
			case "kubelet_credential_provider_plugin_errors_total":
				failures[plugin] = int64(metric.GetCounter().GetValue())
			}
		}
	}
	return execs, failures
}

type configs []string

func (c *configs) String() string     { return strings.Join(*c, ",") }
func (c *configs) Set(v string) error { *c = append(*c, v); return nil }

func main() {
	var configFiles configs
	flag.Var(&configFiles, "config", "a CredentialProviderConfig file (repeatable; provider names must differ)")
	binDir := flag.String("bin-dir", "", "the kubelet's --image-credential-provider-bin-dir")
	kubeconfig := flag.String("kubeconfig", "", "the node's kubeconfig (system:node:NAME)")
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	flag.Parse()
	if len(configFiles) == 0 || *binDir == "" || *kubeconfig == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: kubelet-keyring --config FILE [--config FILE...] --bin-dir DIR --kubeconfig FILE")
		os.Exit(2)
	}
	rec := &recorder{}
	// The kubelet's log lines go to the answer (and errors to stderr as well).
	for name, value := range map[string]string{"logtostderr": "false", "alsologtostderr": "false"} {
		if err := klogFlags.Set(name, value); err != nil {
			fail(err)
		}
	}
	klog.SetOutput(rec)

	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail(fmt.Errorf("reading %s: %w", *kubeconfig, err))
	}
	kubeClient, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		fail(err)
	}
	// pkg/kubelet/kubelet.go NewMainKubelet: tokenManager and getServiceAccount.
	tokenManager := token.NewManager(kubeClient)
	getServiceAccountToken := func(namespace, name string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
		record := TokenRequest{Namespace: namespace, ServiceAccount: name, Audiences: tr.Spec.Audiences}
		if ref := tr.Spec.BoundObjectRef; ref != nil {
			record.BoundKind, record.BoundName = ref.Kind, ref.Name
		}
		issued, err := tokenManager.GetServiceAccountToken(namespace, name, tr)
		if err != nil {
			record.Error = err.Error()
		} else {
			record.Claims = claims(issued.Status.Token)
		}
		rec.mu.Lock()
		rec.tokens = append(rec.tokens, record)
		rec.mu.Unlock()
		return issued, err
	}
	getServiceAccount := func(namespace, name string) (*v1.ServiceAccount, error) {
		return kubeClient.CoreV1().ServiceAccounts(namespace).Get(context.Background(), name, metav1.GetOptions{})
	}
	for _, config := range configFiles {
		if err := plugin.RegisterCredentialProviderPlugins(config, *binDir, getServiceAccountToken, getServiceAccount); err != nil {
			fail(fmt.Errorf("RegisterCredentialProviderPlugins %s: %w", config, err))
		}
	}
	fmt.Println(`{"ready":true}`)

	lines := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for lines.Scan() {
		var req Request
		if err := json.Unmarshal(lines.Bytes(), &req); err != nil {
			fail(fmt.Errorf("request line: %w", err))
		}
		keyring := plugin.NewExternalCredentialProviderDockerKeyring(req.Namespace, req.Pod, req.PodUID, req.ServiceAccount)
		found, ok := keyring.Lookup(req.Image)
		answer := Answer{Found: ok, Credentials: []Credential{}}
		for _, c := range found {
			credential := Credential{Username: c.Username, Password: c.Password}
			if c.Source != nil && c.Source.ServiceAccount != nil {
				credential.ServiceAccount = c.Source.ServiceAccount.Namespace + "/" + c.Source.ServiceAccount.Name
			}
			answer.Credentials = append(answer.Credentials, credential)
		}
		klog.Flush()
		answer.Execs, answer.ExecErrors = counts()
		answer.TokenRequests, answer.Logs = rec.take()
		if req.Pull != "" {
			var result pull.Result
			if len(found) == 0 {
				result = pull.Image(req.Pull)
			} else {
				result = pull.Image(req.Pull, remote.WithAuth(pull.Basic(found[0].Username, found[0].Password)))
			}
			answer.Pull = &result
		}
		if err := out.Encode(answer); err != nil {
			fail(err)
		}
	}
	if err := lines.Err(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "kubelet-keyring: %v\n", err)
	os.Exit(1)
}
