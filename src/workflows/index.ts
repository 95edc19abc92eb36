/** Workflow entry points registered by the worker. */
export { deviceWorkflow } from './device';
export { traversalWorkflow } from './traversal';
export { publishWorkflow } from './publish';
export { taskReportWorkflow } from './task-report';
