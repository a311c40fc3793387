{{- define "bs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-broker-server, or the release name when it already holds the
chart name. Server pods are <fullname>-<ordinal>: the ordinal is the server
id, so the name must not end in a digit-only segment of its own. */}}
{{- define "bs.fullname" -}}
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

{{- define "bs.headlessName" -}}{{ include "bs.fullname" . }}-headless{{- end -}}
{{- define "bs.dispatcherName" -}}{{ include "bs.fullname" . }}-dispatcher{{- end -}}
{{- define "bs.redisName" -}}{{ include "bs.fullname" . }}-redis{{- end -}}

{{- define "bs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "bs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "bs.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "bs.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "bs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bs.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bs.image" -}}
{{- $root := index . 0 -}}
{{- $repo := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag -}}
{{- if $root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "bs.scheme" -}}{{ ternary "https" "http" .Values.enableHttps }}{{- end -}}
{{- define "bs.dispatcherScheme" -}}{{ ternary "https" "http" (not (empty .Values.dispatcher.httpsSecret.name)) }}{{- end -}}

{{- define "bs.httpsSecretName" -}}
{{- default (printf "%s-tls" (include "bs.fullname" .)) .Values.httpsSecret.name -}}
{{- end -}}

{{/* The pod's stable DNS name under the headless Service. */}}
{{- define "bs.podHost" -}}
{{- printf "$(POD_NAME).%s.%s.svc.%s" (include "bs.headlessName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "bs.advertiseUrl" -}}
{{- default (printf "%s://%s:%d" (include "bs.scheme" .) (include "bs.podHost" .) (.Values.server.tunnelPort | int)) .Values.server.advertiseUrl -}}
{{- end -}}

{{- define "bs.internalUrl" -}}
{{- default (printf "%s://%s:%d" (include "bs.scheme" .) (include "bs.podHost" .) (.Values.server.port | int)) .Values.server.internalUrl -}}
{{- end -}}

{{/* DISPATCHER_URL of the servers: the chart's dispatcher Service, or
dispatcher.externalUrl. */}}
{{- define "bs.dispatcherUrl" -}}
{{- if .Values.dispatcher.enabled -}}
{{- printf "%s://%s.%s.svc.%s:%d" (include "bs.dispatcherScheme" .) (include "bs.dispatcherName" .) .Release.Namespace .Values.clusterDomain (.Values.dispatcher.port | int) -}}
{{- else -}}
{{- .Values.dispatcher.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "bs.acceptConfigMapName" -}}
{{- default (printf "%s-accept" (include "bs.fullname" .)) .Values.acceptJsonConfigMap.name -}}
{{- end -}}
{{- define "bs.acceptKey" -}}
{{- if .Values.acceptJsonConfigMap.name -}}{{ .Values.acceptJsonConfigMap.key }}{{- else -}}accept.json{{- end -}}
{{- end -}}

{{- define "bs.hasCa" -}}
{{- if or .Values.caCertFile .Values.caCertFileSecret.name .Values.caCertConfigMap.name -}}true{{- end -}}
{{- end -}}

{{- define "bs.useRedis" -}}
{{- if or .Values.redis.enabled .Values.redis.url .Values.redis.urlSecret.name -}}true{{- end -}}
{{- end -}}

{{- define "bs.redisPasswordSecret" -}}
{{- default (printf "%s-redis" (include "bs.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- define "bs.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}
{{- define "bs.redisAuth" -}}
{{- if or .Values.redis.auth.password .Values.redis.auth.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "bs.validate" -}}
{{- if and (not .Values.acceptJson) (not .Values.acceptJsonConfigMap.name) -}}
{{- fail "acceptJson: required (--set-file acceptJson=server-accept.json), or acceptJsonConfigMap.name naming an existing ConfigMap" -}}
{{- end -}}
{{- if and .Values.acceptJson .Values.acceptJsonConfigMap.name -}}
{{- fail "acceptJson and acceptJsonConfigMap.name: set one of them, not both" -}}
{{- end -}}
{{- $ca := 0 -}}
{{- range (list .Values.caCertFile .Values.caCertFileSecret.name .Values.caCertConfigMap.name) -}}
{{- if . -}}{{- $ca = add1 $ca -}}{{- end -}}
{{- end -}}
{{- if gt $ca 1 -}}
{{- fail "caCertFile, caCertFileSecret.name, caCertConfigMap.name: set at most one of them" -}}
{{- end -}}
{{- if .Values.enableHttps -}}
{{- if and (not .Values.httpsSecret.name) (or (not .Values.httpsCert) (not .Values.httpsKey)) -}}
{{- fail "enableHttps=true: set httpsSecret.name (a kubernetes.io/tls Secret), or both httpsCert and httpsKey" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tunnelClientCaSecret.name (not .Values.enableHttps) -}}
{{- fail "tunnelClientCaSecret.name: mutual TLS on the tunnel needs enableHttps=true" -}}
{{- end -}}
{{- if le (int .Values.server.terminationGracePeriodSeconds) (div (int .Values.server.drainWaitMs) 1000) -}}
{{- fail (printf "server.terminationGracePeriodSeconds=%v: must be longer than server.drainWaitMs (%vms) plus the time in-flight requests need" .Values.server.terminationGracePeriodSeconds .Values.server.drainWaitMs) -}}
{{- end -}}
{{- if and .Values.redis.enabled (or .Values.redis.url .Values.redis.urlSecret.name) -}}
{{- fail "redis.enabled (bundled Redis) and redis.url/redis.urlSecret.name (external Redis): choose one" -}}
{{- end -}}
{{- if and .Values.dispatcher.enabled (gt (int .Values.dispatcher.replicaCount) 1) (not (include "bs.useRedis" .)) -}}
{{- fail (printf "dispatcher.replicaCount=%v: more than one dispatcher replica needs Redis for the shared state; set redis.enabled=true (bundled) or redis.url / redis.urlSecret.name (external)" .Values.dispatcher.replicaCount) -}}
{{- end -}}
{{- if and (not .Values.dispatcher.enabled) (include "bs.useRedis" .) -}}
{{- fail "redis.*: Redis holds the bundled dispatcher's state; it has no use with dispatcher.enabled=false" -}}
{{- end -}}
{{- end -}}

{{- define "bs.affinity" -}}
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
            {{- include "bs.selector" (list $root $component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{- define "bs.spread" -}}
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
      {{- include "bs.selector" (list $root $component) | nindent 6 }}
{{- end -}}
{{- end -}}

{{- define "bs.caVolume" -}}
{{- if include "bs.hasCa" . }}
- name: ca
  {{- if .Values.caCertFileSecret.name }}
  secret:
    secretName: {{ .Values.caCertFileSecret.name }}
    items:
      - key: {{ .Values.caCertFileSecret.key }}
        path: ca.pem
  {{- else if .Values.caCertConfigMap.name }}
  configMap:
    name: {{ .Values.caCertConfigMap.name }}
    items:
      - key: {{ .Values.caCertConfigMap.key }}
        path: ca.pem
  {{- else }}
  configMap:
    name: {{ include "bs.fullname" . }}-ca
  {{- end }}
{{- end }}
{{- end -}}
