package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/valet-dev/valet/policy"
)

// composeFile is the part of docker-compose.yml the test reads.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Build       any               `yaml:"build"`
	Image       string            `yaml:"image"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

// TestDockerCompose keeps docker-compose.yml honest without a Docker
// engine: every service it depends on exists, every host port is unique,
// every bind-mounted file exists, every named volume is declared, every
// VALET_* variable is a real override, and the valet config it mounts
// loads (with the compose environment) together with its templates.
func TestDockerCompose(t *testing.T) {
	root := filepath.Join("..", "..")
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, want := range []string{"valet", "redis", "vault", "vault-init", "postgres", "dex"} {
		if _, ok := cf.Services[want]; !ok {
			t.Errorf("service %s is missing", want)
		}
	}
	hostPorts := map[string]string{}
	mounts := map[string]string{} // valet's container path → host path
	for name, s := range cf.Services {
		if (s.Build == nil) == (s.Image == "") {
			t.Errorf("%s: set exactly one of build and image", name)
		}
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join(root, "Dockerfile")); err != nil {
				t.Errorf("%s: build needs the Dockerfile: %v", name, err)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := cf.Services[dep]; !ok {
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			}
		}
		for _, p := range s.Ports {
			host, _, ok := strings.Cut(p, ":")
			if !ok {
				t.Errorf("%s: port %q: write HOST:CONTAINER", name, p)
				continue
			}
			if other, dup := hostPorts[host]; dup {
				t.Errorf("%s and %s both publish host port %s", name, other, host)
			}
			hostPorts[host] = name
		}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Errorf("%s: volume %q: write SOURCE:TARGET", name, v)
				continue
			}
			src, dst := parts[0], parts[1]
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("%s mounts %s, which does not exist: %v", name, src, err)
				}
				if name == "valet" {
					mounts[dst] = filepath.Join(root, src)
				}
			} else if _, ok := cf.Volumes[src]; !ok {
				t.Errorf("%s uses volume %s, which the top-level volumes do not declare", name, src)
			}
		}
		for k := range s.Environment {
			if strings.HasPrefix(k, "VALET_") {
				if _, ok := envOverrides[k]; !ok {
					t.Errorf("%s sets %s, which is not an override in config.go", name, k)
				}
			}
		}
		for _, arg := range append(slices.Clone(s.Entrypoint), s.Command...) {
			for _, f := range strings.Fields(arg) {
				if strings.HasPrefix(f, "/deploy/") {
					if _, err := os.Stat(filepath.Join(root, f)); err != nil {
						t.Errorf("%s runs %s, which does not exist: %v", name, f, err)
					}
				}
			}
		}
	}

	valet := cf.Services["valet"]
	cfgPath, ok := mounts["/etc/valet/config.yaml"]
	if !ok {
		t.Fatal("valet does not mount a config at /etc/valet/config.yaml")
	}
	if !slices.ContainsFunc(valet.Command, func(c string) bool { return strings.Contains(c, "--config /etc/valet/config.yaml") }) {
		t.Error("valet's command does not serve /etc/valet/config.yaml")
	}
	cfg, err := loadConfig(cfgPath, func(k string) string { return valet.Environment[k] })
	if err != nil {
		t.Fatalf("the mounted valet config does not load: %v", err)
	}
	if cfg.Vault == nil || cfg.Vault.Address != "http://vault:8200" || cfg.Redis.URL != "redis://redis:6379/0" {
		t.Fatalf("compose environment not applied: vault %+v redis %q", cfg.Vault, cfg.Redis.URL)
	}
	names := make([]string, len(cfg.Issuers))
	for i, is := range cfg.Issuers {
		names[i] = is.Name
	}
	var paths []string
	for _, p := range cfg.Templates.Paths {
		host, ok := mounts[p]
		if !ok {
			t.Fatalf("template path %s is not mounted into valet", p)
		}
		paths = append(paths, host)
	}
	files, err := policy.ReadFiles(paths)
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(files, names)
	if err != nil {
		t.Fatalf("compose templates:\n%v", err)
	}
	for _, n := range set.Names() {
		if tmpl, _ := set.Get(n); tmpl.Vault != nil && tmpl.Vault.TokenRole != "valet-task" {
			t.Errorf("template %s uses token role %s, which vault-init does not create", n, tmpl.Vault.TokenRole)
		}
	}
}

// TestVaultConfig covers the vault block's validation and env overrides.
func TestVaultConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := `redis: {url: "redis://127.0.0.1:6379/0"}
signing: {keys: [{file: k.pem}]}
issuers: [{name: test, issuer_url: "https://idp.example.com"}]
templates: {paths: [t]}
`
	write("secret-id", "s3cret-id\n")
	cases := []struct {
		name  string
		vault string
		env   map[string]string
		want  []string // substrings of the error; none means it loads
	}{
		{name: "no vault block", vault: ""},
		{name: "token from env", vault: "vault: {address: \"http://v:8200\"}\n", env: map[string]string{"VALET_VAULT_TOKEN": "hvs.x"}},
		{name: "address from env", vault: "", env: map[string]string{"VALET_VAULT_ADDR": "http://v:8200", "VALET_VAULT_TOKEN": "hvs.x"}},
		{name: "approle", vault: "vault:\n  address: https://v:8200\n  auth: {method: approle, role_id: r, secret_id_file: secret-id}\n"},
		{name: "kubernetes", vault: "vault:\n  address: https://v:8200\n  auth: {method: kubernetes, role: valet}\n"},
		{name: "token missing", vault: "vault: {address: \"http://v:8200\"}\n", want: []string{"vault.auth", "needs a token"}},
		{name: "bad address", vault: "vault: {address: \"v:8200\"}\n", env: map[string]string{"VALET_VAULT_TOKEN": "x"}, want: []string{"vault.address"}},
		{name: "bad method", vault: "vault:\n  address: http://v\n  auth: {method: ldap}\n", want: []string{"must be token, approle, jwt or kubernetes"}},
		{name: "approle without secret", vault: "vault:\n  address: http://v\n  auth: {method: approle, role_id: r}\n", want: []string{"approle needs role_id and a secret id"}},
		{name: "jwt without file", vault: "vault:\n  address: http://v\n  auth: {method: jwt, role: r}\n", want: []string{"jwt needs jwt_file"}},
		{name: "database check from env", vault: "vault:\n  address: http://v\n  database_check_url_env: CHECK\n",
			env: map[string]string{"VALET_VAULT_TOKEN": "hvs.x", "CHECK": "postgresql://check:pw@db:5432/postgres"}},
		{name: "database check env empty", vault: "vault:\n  address: http://v\n  database_check_url_env: CHECK\n",
			env: map[string]string{"VALET_VAULT_TOKEN": "hvs.x"}, want: []string{"vault.database_check_url", "CHECK is empty"}},
		{name: "database check twice", vault: "vault:\n  address: http://v\n  database_check_url_env: CHECK\n  database_check_url_file: secret-id\n",
			env: map[string]string{"VALET_VAULT_TOKEN": "hvs.x", "CHECK": "postgresql://db"}, want: []string{"not both"}},
		{name: "database check unparsable", vault: "vault:\n  address: http://v\n  database_check_url_env: CHECK\n",
			env: map[string]string{"VALET_VAULT_TOKEN": "hvs.x", "CHECK": "postgresql://check:hvs.x@db:notaport/postgres"}, want: []string{"does not parse"}},
		{name: "everything wrong at once", vault: "vault:\n  address: nope\n  timeout: 5ms\n  reconcile_grace: 1s\n", want: []string{"vault.address", "vault.timeout", "vault.reconcile_grace", "vault.auth"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write("c.yaml", base+tc.vault)
			cfg, err := loadConfig(p, func(k string) string { return tc.env[k] })
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Vault != nil && (cfg.Vault.Timeout == 0 || cfg.Vault.DatabaseMount != "database") {
					t.Fatalf("defaults not applied: %+v", cfg.Vault)
				}
				return
			}
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "hvs.x") {
				t.Error("the error echoes the token")
			}
		})
	}
}
