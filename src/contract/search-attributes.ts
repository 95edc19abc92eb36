/** Search attribute keys set by the workflows; all Keyword, registered by the dev-server tooling. */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** The task id of a traversal. */
export const TASK_ID = defineSearchAttributeKey('TaskId', SearchAttributeType.KEYWORD);
/** The device a traversal or device workflow belongs to. */
export const DEVICE_ID = defineSearchAttributeKey('DeviceId', SearchAttributeType.KEYWORD);
/** The Android package under test. */
export const APP_PACKAGE = defineSearchAttributeKey('AppPackage', SearchAttributeType.KEYWORD);
/** The current phase of a traversal (downloading, traversing, completed…). */
export const TRAVERSAL_PHASE = defineSearchAttributeKey('TraversalPhase', SearchAttributeType.KEYWORD);

/** Health of a device workflow: 'quarantined' after repeated infrastructure failures, 'ok' once resumed. */
export const DEVICE_HEALTH = defineSearchAttributeKey('DeviceHealth', SearchAttributeType.KEYWORD);

/** Names of the attributes, for registration on a server. */
export const SEARCH_ATTRIBUTE_NAMES = ['TaskId', 'DeviceId', 'AppPackage', 'TraversalPhase', 'DeviceHealth'] as const;
