package entry

import (
	"strings"
	"testing"

	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/kube-openapi/pkg/builder"
	"k8s.io/kube-openapi/pkg/builder3"
	openapiutil "k8s.io/kube-openapi/pkg/util"
	metricsv1beta1 "k8s.io/metrics/pkg/apis/metrics/v1beta1"
	"sigs.k8s.io/metrics-server/pkg/api"
	generatedopenapi "sigs.k8s.io/metrics-server/pkg/api/generated/openapi"
)

// The OpenAPI models metrics-server's API server builds when it installs
// its API (what made upstream's command exit with "cannot find model
// definition" against the API machinery kiln links), from the configs
// upstream makes and from the ones setOpenAPIDefinitions makes.
func TestMetricsServerOpenAPIModels(t *testing.T) {
	names := []string{
		openapiutil.GetCanonicalTypeName(&metricsv1beta1.NodeMetrics{}),
		openapiutil.GetCanonicalTypeName(&metricsv1beta1.PodMetrics{}),
		openapiutil.GetCanonicalTypeName(&metricsv1beta1.NodeMetricsList{}),
		openapiutil.GetCanonicalTypeName(&metricsv1beta1.PodMetricsList{}),
	}
	build := func(c *genericapiserver.Config) error {
		if _, err := builder3.BuildOpenAPIDefinitionsForResources(c.OpenAPIV3Config, names...); err != nil {
			return err
		}
		_, err := builder.BuildOpenAPIDefinitionsForResources(c.OpenAPIConfig, names...)
		return err
	}
	// As upstream's options.ServerConfig makes them.
	upstream := func() *genericapiserver.Config {
		c := &genericapiserver.Config{
			OpenAPIConfig:   genericapiserver.DefaultOpenAPIConfig(generatedopenapi.GetOpenAPIDefinitions, openapinamer.NewDefinitionNamer(api.Scheme)),
			OpenAPIV3Config: genericapiserver.DefaultOpenAPIV3Config(generatedopenapi.GetOpenAPIDefinitions, openapinamer.NewDefinitionNamer(api.Scheme)),
		}
		c.OpenAPIV3Config.Info.Title = "Kubernetes metrics-server"
		return c
	}
	c := upstream()
	setOpenAPIDefinitions(c)
	if err := build(c); err != nil {
		t.Fatalf("models %v: %v", names, err)
	}
	if c.OpenAPIV3Config.Info.Title != "Kubernetes metrics-server" {
		t.Errorf("title %q: upstream's info is kept", c.OpenAPIV3Config.Info.Title)
	}
	// If upstream's names ever match again, the wrapper can go.
	if err := build(upstream()); err == nil || !strings.Contains(err.Error(), "cannot find model definition") {
		t.Logf("upstream's definitions now build on their own (%v): setOpenAPIDefinitions may be dropped", err)
	}
}
