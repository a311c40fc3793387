{{/* Names: <release>-broker-client, or the release name when it already
holds the chart name. Kept short enough for the suffixes below. */}}
{{- define "bc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bc.tunnelName" -}}{{ include "bc.fullname" . }}-tunnel{{- end -}}
{{- define "bc.egressServiceName" -}}{{ include "bc.fullname" . }}-tunnel-egress{{- end -}}
{{- define "bc.webhookName" -}}{{ include "bc.fullname" . }}-webhook{{- end -}}

{{- define "bc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "bc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "bc.selector" (list . "tunnel") */}}
{{- define "bc.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "bc.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "bc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bc.image" -}}
{{- $root := index . 0 -}}
{{- $repo := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag -}}
{{- if $root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "bc.haEnabled" -}}
{{- if .Values.highAvailabilityMode.enabled -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "bc.tunnelReplicas" -}}
{{- if .Values.highAvailabilityMode.enabled -}}{{ .Values.replicaCount | int }}{{- else -}}1{{- end -}}
{{- end -}}

{{- define "bc.webhookTls" -}}
{{- if .Values.enableBrokerLocalWebserverOverHttps -}}true{{- end -}}
{{- end -}}

{{/* BROKER_CLIENT_URL: the value, or the webhook Service inside the cluster. */}}
{{- define "bc.clientUrl" -}}
{{- if .Values.brokerClientUrl -}}
{{- .Values.brokerClientUrl -}}
{{- else -}}
{{- printf "%s://%s.%s.svc.%s:%d" (ternary "https" "http" (eq (include "bc.webhookTls" .) "true")) (include "bc.webhookName" .) .Release.Namespace .Values.clusterDomain (.Values.webhook.service.port | int) -}}
{{- end -}}
{{- end -}}

{{- define "bc.egressTarget" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "bc.egressServiceName" .) .Release.Namespace .Values.clusterDomain (.Values.tunnel.egressPort | int) -}}
{{- end -}}

{{/* Token Secret: an existing one, or the chart's. */}}
{{- define "bc.tokenSecretName" -}}
{{- default (printf "%s-token" (include "bc.fullname" .)) .Values.brokerTokenSecret.name -}}
{{- end -}}
{{- define "bc.tokenSecretKey" -}}
{{- if .Values.brokerTokenSecret.name -}}{{ .Values.brokerTokenSecret.key }}{{- else -}}broker-token{{- end -}}
{{- end -}}

{{- define "bc.acceptConfigMapName" -}}
{{- default (printf "%s-accept" (include "bc.fullname" .)) .Values.acceptJsonConfigMap.name -}}
{{- end -}}
{{- define "bc.acceptKey" -}}
{{- if .Values.acceptJsonConfigMap.name -}}{{ .Values.acceptJsonConfigMap.key }}{{- else -}}accept.json{{- end -}}
{{- end -}}

{{/* The CA bundle's PEM text from caCert (a chart file) or caCertFile. */}}
{{- define "bc.caPem" -}}
{{- if .Values.caCertFile -}}
{{- .Values.caCertFile -}}
{{- else if .Values.caCert -}}
{{- $pem := .Files.Get .Values.caCert -}}
{{- if not $pem -}}
{{- fail (printf "caCert: no file %q in the chart directory (use --set-file caCertFile=<path> for a file elsewhere)" .Values.caCert) -}}
{{- end -}}
{{- $pem -}}
{{- end -}}
{{- end -}}

{{- define "bc.hasCa" -}}
{{- if or .Values.caCert .Values.caCertFile .Values.caCertFileSecret.name .Values.caCertConfigMap.name -}}true{{- end -}}
{{- end -}}

{{- define "bc.httpsSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "bc.fullname" .)) .Values.httpsSecret.name -}}
{{- end -}}

{{/* Every check that a schema cannot state, with one clear line each. */}}
{{- define "bc.validate" -}}
{{- if and (not .Values.brokerToken) (not .Values.brokerTokenSecret.name) -}}
{{- fail "brokerToken: required (--set brokerToken=<token>), or brokerTokenSecret.name naming an existing Secret" -}}
{{- end -}}
{{- if and .Values.brokerToken .Values.brokerTokenSecret.name -}}
{{- fail "brokerToken and brokerTokenSecret.name: set one of them, not both" -}}
{{- end -}}
{{- if and (not .Values.acceptJson) (not .Values.acceptJsonConfigMap.name) -}}
{{- fail "acceptJson: required (--set-file acceptJson=accept.json), or acceptJsonConfigMap.name naming an existing ConfigMap" -}}
{{- end -}}
{{- if and .Values.acceptJson .Values.acceptJsonConfigMap.name -}}
{{- fail "acceptJson and acceptJsonConfigMap.name: set one of them, not both" -}}
{{- end -}}
{{- $ca := 0 -}}
{{- range (list .Values.caCert .Values.caCertFile .Values.caCertFileSecret.name .Values.caCertConfigMap.name) -}}
{{- if . -}}{{- $ca = add1 $ca -}}{{- end -}}
{{- end -}}
{{- if gt $ca 1 -}}
{{- fail "caCert, caCertFile, caCertFileSecret.name, caCertConfigMap.name: set at most one of them" -}}
{{- end -}}
{{- if .Values.highAvailabilityMode.enabled -}}
{{- if not .Values.haAgent.enabled -}}
{{- fail "haAgent.enabled=false: HA mode needs the ha-agent sidecar" -}}
{{- end -}}
{{- if or (lt (int .Values.replicaCount) 2) (gt (int .Values.replicaCount) 4) -}}
{{- fail (printf "replicaCount=%v: HA mode runs 2 to 4 replicas" .Values.replicaCount) -}}
{{- end -}}
{{- if not .Values.brokerDispatcherUrl -}}
{{- fail "brokerDispatcherUrl: required in HA mode" -}}
{{- end -}}
{{- end -}}
{{- if .Values.enableBrokerLocalWebserverOverHttps -}}
{{- if and (not .Values.httpsSecret.name) (or (not .Values.httpsCert) (not .Values.httpsKey)) -}}
{{- fail "enableBrokerLocalWebserverOverHttps=true: set httpsSecret.name (a kubernetes.io/tls Secret), or both httpsCert and httpsKey" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tunnelClientCertSecret.name (not (hasPrefix "https://" .Values.brokerServerUrl)) -}}
{{- fail "tunnelClientCertSecret.name: a client certificate is only presented over TLS; brokerServerUrl must be https://" -}}
{{- end -}}
{{- if .Values.networkPolicy.enabled -}}
{{- if not .Values.networkPolicy.brokerServer -}}
{{- fail "networkPolicy.brokerServer: at least one {cidr, ports} entry is needed when networkPolicy.enabled=true (the tunnel must reach the server)" -}}
{{- end -}}
{{- if and .Values.highAvailabilityMode.enabled (not .Values.networkPolicy.dispatcher) -}}
{{- fail "networkPolicy.dispatcher: at least one {cidr, ports} entry is needed with networkPolicy.enabled=true in HA mode (the ha-agent must reach the dispatcher)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Egress rules from a list of {cidr, ports}. */}}
{{- define "bc.cidrRules" -}}
{{- range . }}
- to:
    - ipBlock:
        cidr: {{ .cidr | quote }}
  {{- with .ports }}
  ports:
    {{- range . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "bc.dnsRule" -}}
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
  ports:
    {{- range .Values.networkPolicy.dns.ports }}
    - protocol: UDP
      port: {{ . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end -}}

{{/* Pod placement defaults: prefer other nodes, spread over zones. */}}
{{- define "bc.affinity" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $custom := index . 2 -}}
{{- if $custom -}}
{{- toYaml $custom -}}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "bc.selector" (list $root $component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{- define "bc.spread" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $custom := index . 2 -}}
{{- if $custom -}}
{{- toYaml $custom -}}
{{- else -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "bc.selector" (list $root $component) | nindent 6 }}
{{- end -}}
{{- end -}}
