package entry

import (
	"errors"
	"flag"

	"github.com/spf13/cobra"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/component-base/logs"
	"k8s.io/kube-openapi/pkg/common"
	openapiutil "k8s.io/kube-openapi/pkg/util"
	"sigs.k8s.io/metrics-server/cmd/metrics-server/app/options"
	"sigs.k8s.io/metrics-server/pkg/api"
	generatedopenapi "sigs.k8s.io/metrics-server/pkg/api/generated/openapi"
)

// runMetricsServer runs upstream metrics-server (its options, its server)
// the way its app.NewMetricsServerCommand does, with one difference: its
// OpenAPI definitions are also offered under the names Kubernetes 1.35+
// looks them up by. metrics-server v0.8.0 generated them keyed by Go
// package path (k8s.io/metrics/pkg/apis/metrics/v1beta1.NodeMetrics); the
// API machinery kiln links asks for the types' own model names
// (io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics), and upstream's
// command exits with "cannot find model definition". SIGTERM stops it
// cleanly (the supervisor's stop).
func runMetricsServer(args []string) int {
	stop := genericapiserver.SetupSignalHandler()
	o := options.NewOptions()
	cmd := &cobra.Command{
		Use:   "metrics-server",
		Short: "the resource metrics API (kubectl top) of a kiln master",
		RunE: func(*cobra.Command, []string) error {
			if errs := o.Validate(); len(errs) > 0 {
				return errors.Join(errs...)
			}
			cfg, err := o.ServerConfig()
			if err != nil {
				return err
			}
			setOpenAPIDefinitions(cfg.Apiserver)
			s, err := cfg.Complete()
			if err != nil {
				return err
			}
			return s.RunUntil(stop)
		},
	}
	for _, f := range o.Flags().FlagSets {
		cmd.Flags().AddFlagSet(f)
	}
	goFlags := flag.NewFlagSet("metrics-server", flag.ContinueOnError)
	logs.AddGoFlags(goFlags)
	cmd.Flags().AddGoFlagSet(goFlags)
	return runCobra(cmd, args)
}

// setOpenAPIDefinitions makes c's OpenAPI configs again as upstream
// does, from withModelNames' definitions, keeping upstream's titles and
// versions (the configs also hold the definitions computed when they
// were made, so replacing the function alone changes nothing).
func setOpenAPIDefinitions(c *genericapiserver.Config) {
	defs := withModelNames(generatedopenapi.GetOpenAPIDefinitions)
	v2 := genericapiserver.DefaultOpenAPIConfig(defs, openapinamer.NewDefinitionNamer(api.Scheme))
	v3 := genericapiserver.DefaultOpenAPIV3Config(defs, openapinamer.NewDefinitionNamer(api.Scheme))
	if c.OpenAPIConfig != nil {
		v2.Info = c.OpenAPIConfig.Info
	}
	if c.OpenAPIV3Config != nil {
		v3.Info = c.OpenAPIV3Config.Info
	}
	c.OpenAPIConfig, c.OpenAPIV3Config = v2, v3
}

// withModelNames offers every definition under its Go path name and its
// REST-friendly model name both.
func withModelNames(defs common.GetOpenAPIDefinitions) common.GetOpenAPIDefinitions {
	return func(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
		in := defs(ref)
		out := make(map[string]common.OpenAPIDefinition, 2*len(in))
		for name, d := range in {
			out[name] = d
			if friendly := openapiutil.ToRESTFriendlyName(name); friendly != name {
				if _, taken := in[friendly]; !taken {
					out[friendly] = d
				}
			}
		}
		return out
	}
}
