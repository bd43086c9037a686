// Uses the generated types the way a client would, so a spec change that
// breaks a request or answer shape fails to compile here.
import type { components, paths } from "./gen/valet.js";

type Schemas = components["schemas"];

export const declaration: Schemas["Declaration"] = {
  template: "read-invoices",
  intent: "Summarise last month's invoices",
  tools: ["invoices.read"],
  ttl_seconds: 900,
};

export function taskID(answer: Schemas["DeclareResponse"]): string {
  return answer.task.id;
}

export function errorCode(err: Schemas["Error"]): string {
  return `${err.error}: ${err.message} (rule ${err.rule ?? "-"}, field ${err.field ?? "-"}, request ${err.request_id ?? "-"})`;
}

type DeclareBody = paths["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"];
export const body: DeclareBody = declaration;

export const renewal: Schemas["RenewRequest"] = { ttl_seconds: 600 };
type RenewAnswer = paths["/v1/tasks/{id}/renew"]["post"]["responses"][200]["content"]["application/json"];
export function renewedDeadline(answer: RenewAnswer): string {
  return answer.task.deadline;
}
