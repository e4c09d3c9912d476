//go:build tools

package tools

import _ "knative.dev/serving/cmd/queue"
