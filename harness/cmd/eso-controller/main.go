// Command eso-controller is External Secrets Operator v0.20.4's controller: its own main
// (the module's main.go calls controller.Execute, and so does this), with one addition
// made before it starts: this process's DNS answers for the names in HARNESS_RESOLVE
// (internal/testdns), as a cluster's DNS answers for a Service. That is how ESO's Webhook
// client, unchanged, reaches `cloudsmith-gen.cloudsmith-gen.svc:8443` (deploy/eso/apps.yaml)
// at the loopback address a test's `serve` listens on. Every flag is ESO's.
package main

import (
	"fmt"
	"os"

	"github.com/external-secrets/external-secrets/cmd/controller"

	"cloudsmith-access-token/harness/internal/testdns"
)

func main() {
	if err := testdns.InstallFromEnv(); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(2)
	}
	controller.Execute()
}
