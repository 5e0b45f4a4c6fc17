import type { Me } from "./api";

// What the console shows; the server decides what is allowed (403 otherwise).
export const isAdmin = (me: Me) => me.roles.includes("admin");
export const canReview = (me: Me) => me.roles.some((r) => r === "admin" || r === "reviewer");
export const canAudit = (me: Me) => me.roles.some((r) => r === "admin" || r === "auditor");
