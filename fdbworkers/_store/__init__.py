"""The transactions, by subject: members, events, jobs and claims, and the admin
read model. Each function takes the transaction first and runs in the shared retry loop."""
