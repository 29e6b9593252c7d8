// Command eso-generate runs one generator of External Secrets Operator v0.20.4 exactly as
// ESO's ExternalSecret controller does for a `dataFrom[].sourceRef.generatorRef`
// (pkg/controllers/externalsecret/externalsecret_controller_secret.go,
// handleGenerateSecrets): resolvers.GeneratorRef reads the generator object through a
// controller-runtime client with ESO's scheme, then the generator's Generate runs with
// that client and the ExternalSecret's namespace. Only ESO's code decides the answer.
//
// The objects come from a real API server (KUBECONFIG, or controller-runtime's
// --kubeconfig flag) or, with --objects, from controller-runtime's fake client. The
// Cloudsmith generator builds its own Kubernetes client from KUBECONFIG
// (pkg/esutils/utils.go, FetchServiceAccountToken), as in a cluster.
//
// Output, one JSON line on stdout, exit 0 when Generate returned:
//
//	{"data":{"auth":"<base64 of the value's bytes>","expiry":"..."}}
//	{"error":"<err.Error()>","noSecret":false,"notModified":false}
//
// `noSecret` is errors.Is(err, esv1.NoSecretErr), the error the controller turns into
// "delete the data" when deletionPolicy is not Retain; `notModified` likewise for
// esv1.NotModifiedErr. Bad flags or objects: one `error:` line on stderr, exit 2.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlcfg "sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	esv1 "github.com/external-secrets/external-secrets/apis/externalsecrets/v1"
	esv1alpha1 "github.com/external-secrets/external-secrets/apis/externalsecrets/v1alpha1"
	genv1alpha1 "github.com/external-secrets/external-secrets/apis/generators/v1alpha1"
	"github.com/external-secrets/external-secrets/pkg/esutils/resolvers"

	// The two generators the tests run register themselves (their init), as
	// pkg/generator/register does for the controller.
	_ "github.com/external-secrets/external-secrets/pkg/generator/cloudsmith"
	_ "github.com/external-secrets/external-secrets/pkg/generator/webhook"

	"cloudsmith-access-token/harness/internal/testdns"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// result is the one line written on stdout.
type result struct {
	Data        map[string][]byte `json:"data,omitempty"`
	Error       string            `json:"error,omitempty"`
	NoSecret    bool              `json:"noSecret,omitempty"`
	NotModified bool              `json:"notModified,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(2)
	}
}

func run() error {
	var objects, resolve list
	namespace := flag.String("namespace", "", "the ExternalSecret's namespace (required)")
	generator := flag.String("generator", "", "KIND/NAME of the generator, in generators.external-secrets.io/v1alpha1 (required)")
	flag.Var(&objects, "objects", "a YAML or JSON file of objects for controller-runtime's fake client instead of an API server (repeatable)")
	flag.Var(&resolve, "resolve", "NAME=IP: this process's DNS answer for NAME (repeatable)")
	// Not ESO's: the controller's reconcile has no deadline of its own; this keeps a
	// test from waiting forever on a Webhook without `timeout`.
	deadline := flag.Duration("deadline", 5*time.Minute, "bound on the whole run")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	if *namespace == "" {
		return errors.New("--namespace is required")
	}
	kind, name, ok := strings.Cut(*generator, "/")
	if !ok || kind == "" || name == "" {
		return fmt.Errorf("--generator %q is not KIND/NAME", *generator)
	}
	table := map[string]netip.Addr{}
	for _, r := range resolve {
		t, err := testdns.Parse(r)
		if err != nil {
			return fmt.Errorf("--resolve: %w", err)
		}
		for k, v := range t {
			table[k] = v
		}
	}
	testdns.Install(table)

	// ESO's scheme (cmd/controller/root.go, init).
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
	utilruntime.Must(esv1.AddToScheme(scheme))
	utilruntime.Must(esv1alpha1.AddToScheme(scheme))
	utilruntime.Must(genv1alpha1.AddToScheme(scheme))

	var kube client.Client
	if len(objects) > 0 {
		var objs []client.Object
		for _, path := range objects {
			read, err := readObjects(path, scheme)
			if err != nil {
				return err
			}
			objs = append(objs, read...)
		}
		kube = fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
	} else {
		cfg, err := ctrlcfg.GetConfig()
		if err != nil {
			return fmt.Errorf("no API server: %w", err)
		}
		kube, err = client.New(cfg, client.Options{Scheme: scheme})
		if err != nil {
			return fmt.Errorf("API client: %w", err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()
	ref := &esv1.GeneratorRef{APIVersion: genv1alpha1.Group + "/" + genv1alpha1.Version, Kind: kind, Name: name}
	out := result{}
	impl, resource, err := resolvers.GeneratorRef(ctx, kube, scheme, *namespace, ref)
	if err == nil {
		out.Data, _, err = impl.Generate(ctx, resource, kube, *namespace)
	}
	if err != nil {
		out = result{
			Error:       err.Error(),
			NoSecret:    errors.Is(err, esv1.NoSecretErr),
			NotModified: errors.Is(err, esv1.NotModifiedErr),
		}
	}
	line, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(line))
	return err
}

// readObjects decodes every document of a YAML or JSON stream with the scheme's codecs.
func readObjects(path string, scheme *runtime.Scheme) ([]client.Object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	decoder := serializer.NewCodecFactory(scheme).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []client.Object
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if strings.TrimSpace(string(doc)) == "" {
			continue
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		o, ok := obj.(client.Object)
		if !ok {
			return nil, fmt.Errorf("%s: document %d: %T is not an object", path, i, obj)
		}
		objs = append(objs, o)
	}
}
